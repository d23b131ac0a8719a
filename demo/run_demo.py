"""Run the whole pipeline once on a bundled video and print the lecture report.

The demo starts a private Mosquitto on a free loopback port and the aggregator with a
fresh SQLite database, and defines a lecture over the video's time span. It then
replays the video through the edge agent and waits until the aggregator has stored
every window the agent published. Last, it prints the report and stops everything it
started.

Usage: python demo/run_demo.py [--work-dir DIR] [--video FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
AGENT_CONFIG = REPO_ROOT / "demo" / "agent.toml"
DEFAULT_VIDEO = REPO_ROOT / "data" / "media" / "WolfgangLanger_Pexels.mp4"
# The recorded lecture is replayed as if it had started at this time.
LECTURE_START = datetime.fromisoformat("2026-03-02T09:00:00+00:00")
ROOM = "demo-room"
READY_TIMEOUT_S = 30.0
STORE_TIMEOUT_S = 30.0
# Marks a work folder as the demo's own, so that the next run may empty it.
WORK_DIR_MARKER = ".classroom-emotion-demo"
DEMO_FILE_PREFIXES = ("aggregator.", "agent-", "mosquitto.", "notify.sock", WORK_DIR_MARKER)


class DemoError(Exception):
    """A step of the demo failed. The message names the step and the cause."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def find_mosquitto() -> str:
    for candidate in (shutil.which("mosquitto"), "/usr/sbin/mosquitto"):
        if candidate and Path(candidate).exists():
            return candidate
    raise DemoError("The mosquitto broker is not installed. Run: sudo apt-get install -y mosquitto")


def start_broker(work_dir: Path, port: int) -> subprocess.Popen:
    config = work_dir / "mosquitto.conf"
    config.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    log_file = (work_dir / "mosquitto.log").open("w")
    broker = subprocess.Popen([find_mosquitto(), "-c", str(config)], stdout=log_file, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if broker.poll() is not None:
            raise DemoError(f"mosquitto exited at start; see {work_dir / 'mosquitto.log'}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return broker
        except OSError:
            time.sleep(0.05)
    raise DemoError(f"mosquitto did not listen on 127.0.0.1:{port} within {READY_TIMEOUT_S} s")


def start_aggregator(work_dir: Path, db_url: str, port: int) -> subprocess.Popen:
    """Start ``aggregator run`` and wait for its systemd-style READY=1, sent once it is subscribed."""
    notify_path = work_dir / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify_socket:
        notify_socket.bind(str(notify_path))
        environment = dict(os.environ, NOTIFY_SOCKET=str(notify_path))
        log_file = (work_dir / "aggregator.log").open("w")
        command = [tool("aggregator"), "run", "--db", db_url, "--host", "127.0.0.1", "--port", str(port)]
        aggregator = subprocess.Popen(command, env=environment, stdout=log_file, stderr=subprocess.STDOUT)
        # Short waits, so that an aggregator that exits at start is noticed at once.
        notify_socket.settimeout(0.2)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            try:
                if notify_socket.recv(256) == b"READY=1":
                    return aggregator
            except TimeoutError:
                pass
            if aggregator.poll() is not None:
                raise DemoError(f"the aggregator exited at start (exit {aggregator.returncode}); "
                                f"see {work_dir / 'aggregator.log'}")
            if time.monotonic() > deadline:
                aggregator.terminate()
                raise DemoError(f"the aggregator did not subscribe within {READY_TIMEOUT_S} s; "
                                f"see {work_dir / 'aggregator.log'}")


def tool(name: str) -> str:
    """Return the console script installed beside this Python, so the demo runs in the project's venv."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise DemoError(f"{name} is not installed in {path.parent}. Run 'make demo' to install the project.")
    return str(path)


def run_checked(command: list[str], what: str) -> str:
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise DemoError(f"{what} failed (exit {result.returncode}):\n{result.stderr.strip()}")
    return result.stdout


def video_duration_s(video: Path) -> float:
    from edge_agent.capture import VideoFileSource
    from edge_agent.errors import SourceError

    try:
        source = VideoFileSource(video, sample_fps=1.0, start=LECTURE_START)
    except SourceError as error:
        raise DemoError(str(error)) from None
    source.close()
    return source.frame_count / source.fps


def wait_for_windows(db_url: str, expected: int) -> int:
    from aggregator.store import Store

    deadline = time.monotonic() + STORE_TIMEOUT_S
    with Store.open(db_url) as store:
        while True:
            stored = store.count_windows()
            if stored >= expected or time.monotonic() > deadline:
                return stored
            time.sleep(0.1)


def stop(process: subprocess.Popen | None) -> None:
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def prepare_work_dir(work_dir: Path) -> None:
    """Empty a work folder that an earlier demo made, or create a new one.

    A folder that contains anything else is rejected, never emptied, because ``--work-dir``
    may name a folder with the user's own files.
    """
    if work_dir.exists():
        if not work_dir.is_dir():
            raise DemoError(f"--work-dir {work_dir} is a file: give a folder the demo may create")
        names = [entry.name for entry in work_dir.iterdir()]
        # Folders of demo versions before the marker hold only the demo's own files.
        if (work_dir / WORK_DIR_MARKER).is_file() or (names and all(name.startswith(DEMO_FILE_PREFIXES) for name in names)):
            shutil.rmtree(work_dir)
        elif names:
            raise DemoError(
                f"--work-dir {work_dir} is not empty and was not made by the demo: give a new or empty "
                "folder, or leave out --work-dir"
            )
    work_dir.mkdir(parents=True, exist_ok=True)
    (work_dir / WORK_DIR_MARKER).write_text("Made by demo/run_demo.py, which empties this folder on its next run.\n")


def run_demo(work_dir: Path, video: Path) -> str:
    """Run the pipeline and return the report text."""
    prepare_work_dir(work_dir)
    db_url = f"sqlite:///{work_dir / 'aggregator.db'}"
    port = free_port()
    broker = aggregator = None
    try:
        print(f"Starting a private Mosquitto broker on 127.0.0.1:{port}", flush=True)
        broker = start_broker(work_dir, port)
        print("Starting the aggregator (SQLite database in the work folder)", flush=True)
        aggregator = start_aggregator(work_dir, db_url, port)

        end = LECTURE_START + timedelta(seconds=video_duration_s(video))
        lecture_id = run_checked(
            [tool("aggregator"), "lecture", "add", "--db", db_url, "--room", ROOM,
             "--start", LECTURE_START.isoformat(), "--end", end.isoformat(),
             "--title", "Demo lecture", "--tz", "UTC"],
            "aggregator lecture add",
        ).strip()

        print(f"Replaying {video.name} through the edge agent", flush=True)
        summary_path = work_dir / "agent-summary.json"
        run_checked(
            [tool("edge-agent"), "run", "--config", str(AGENT_CONFIG), "--source", str(video),
             "--start", LECTURE_START.isoformat(), "--mqtt-port", str(port),
             "--outbox", str(work_dir / "agent-outbox.sqlite3"),
             "--summary-json", str(summary_path), "--log-level", "WARNING"],
            "edge-agent run",
        )
        summary = json.loads(summary_path.read_text())
        stored = wait_for_windows(db_url, summary["windows_published"])
        if stored != summary["windows_published"]:
            raise DemoError(
                f"the agent published {summary['windows_published']} windows but the aggregator stored {stored}; "
                f"see {work_dir / 'aggregator.log'}"
            )
        print(
            f"The agent analysed {summary['frames_sampled']} frames with {summary['faces_seen']} face detections "
            f"and published {summary['windows_published']} windows; the aggregator stored {stored}.\n",
            flush=True,
        )
        return run_checked(
            [tool("aggregator"), "report", lecture_id, "--db", db_url, "--step-s", "5", "--tz", "UTC"],
            "aggregator report",
        )
    finally:
        stop(aggregator)
        stop(broker)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", type=Path, default=REPO_ROOT / ".demo", help="folder for the database and logs")
    parser.add_argument("--video", type=Path, default=DEFAULT_VIDEO, help="video to replay")
    args = parser.parse_args()
    try:
        print(run_demo(args.work_dir.resolve(), args.video.resolve()))
    except DemoError as error:
        print(f"demo: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("demo: interrupted; the broker and the aggregator were stopped", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
