"""Peak RSS of the agent with its default config on a 1280x720 replay.

Usage: python bench/agent_rss.py

Only the source (the bundled clip scaled to 1280x720, replayed as a video file with
frame size 1280x720), min_faces and the broker port differ from the defaults.
"""

from __future__ import annotations

import shutil

from agent_common import run_agent, scaled_video, start_broker, work_dir


def main() -> None:
    directory = work_dir()
    video = scaled_video(1280, 720, directory)
    broker = start_broker(directory)
    try:
        config = (
            'device_id = "bench"\nroom = "bench"\n'
            f'[source]\nkind = "video"\nuri = "{video}"\nwidth = 1280\nheight = 720\n'
            f"[mqtt]\nport = {broker.port}\n"
        )
        run = run_agent(config, directory, "rss-720p", ("--start", "2026-03-02T09:00:00+00:00"))
    finally:
        broker.stop()
    budget_line = next(line for line in run.log.splitlines() if "RAM budget:" in line)
    print(f"frames analysed: {run.summary['frames_sampled']}, windows: {run.summary['windows_published']}")
    print(f"peak RSS: {run.peak_rss_mib:.1f} MiB (target <= 100 MiB)")
    print(f"start-up budget: {budget_line.split('RAM budget: ', 1)[1]}")
    shutil.rmtree(directory)


if __name__ == "__main__":
    main()
