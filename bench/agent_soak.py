"""RSS of a long-running agent: after the first minute versus at the end.

Usage: python bench/agent_soak.py [--minutes M]

The agent reads the bundled clip scaled to 1280x720 (MJPEG) as a live stream
(kind = "camera" with a file path), which it reopens 5 s after every end, so it runs
the live-source code path (reader thread, latest-frame slot, reconnects) for as long
as the benchmark lasts. A private Mosquitto receives its windows and stats. RSS is read
from /proc/PID/status every 5 s.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from agent_common import REPO_ROOT, scaled_video, start_broker, work_dir


def read_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=60.0, help="how long to run the agent")
    args = parser.parse_args()
    directory = work_dir()
    video = scaled_video(1280, 720, directory)
    broker = start_broker(directory)
    config = directory / "soak.toml"
    config.write_text(
        'device_id = "soak"\nroom = "soak"\n'
        f'[source]\nkind = "camera"\nuri = "{video}"\nwidth = 1280\nheight = 720\n'
        "reconnect_min_s = 5.0\nreconnect_max_s = 5.0\n"
        f"[mqtt]\nport = {broker.port}\nstats_interval_s = 60\n"
        f'[outbox]\npath = "{directory / "outbox.sqlite3"}"\n'
    )
    log_path = directory / "soak.log"
    samples: list[tuple[float, float]] = []
    with log_path.open("w") as log_file:
        agent = subprocess.Popen(
            [sys.executable, "-m", "edge_agent.cli", "run", "--config", str(config)],
            cwd=REPO_ROOT, stdout=log_file, stderr=subprocess.STDOUT,
        )
        started = time.monotonic()
        try:
            while time.monotonic() - started < args.minutes * 60 and agent.poll() is None:
                time.sleep(5)
                samples.append((time.monotonic() - started, read_rss_mib(agent.pid)))
        finally:
            agent.send_signal(signal.SIGTERM)
            agent.wait(timeout=30)
            broker.stop()
    after_minute = next(rss for elapsed, rss in samples if elapsed >= 60)
    final = samples[-1][1]
    peak = max(rss for _, rss in samples)
    stats_lines = [line for line in log_path.read_text().splitlines() if "Stats:" in line]
    print(f"ran {samples[-1][0] / 60:.1f} min, {len(samples)} RSS samples")
    print(f"RSS after 1 min: {after_minute:.1f} MiB, at the end: {final:.1f} MiB "
          f"({100 * (final - after_minute) / after_minute:+.1f} %), peak of samples: {peak:.1f} MiB")
    if stats_lines:
        print(f"last stats line: {stats_lines[-1]}")
    shutil.rmtree(directory)


if __name__ == "__main__":
    main()
