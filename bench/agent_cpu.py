"""CPU time of the whole agent per sampled 1920x1080 frame, with classroom-scale detection.

Usage: python bench/agent_cpu.py [--repeats N] [--capture-fps F]

Runs the agent twice on the bundled clip scaled to 1920x1080 (MJPEG), once on one copy
and once on 1 + N copies in a row, with the default detector (BlazeFace, min_face_px 20)
and sampling (2 frames/s). The difference of the two runs' CPU times (user + system)
divided by the difference of their analysed frames removes start-up, so the result is
the steady cost per sampled frame: decoding, detection, classification and publishing.
Decoding here is MJPEG of every frame, including those not sampled (OpenCV's FFmpeg
``grab`` decodes). ``--capture-fps F`` writes the clip at F frames/s over the same
duration, as a camera set to ``capture_fps = F`` delivers it, so fewer frames are decoded
per sampled frame.
"""

from __future__ import annotations

import argparse
import shutil

from agent_common import run_agent, scaled_video, start_broker, work_dir


def config_text(video, port: int) -> str:
    # budget_mib is raised so that the measurement runs whatever the start-up parts add up to.
    return (
        'device_id = "bench"\nroom = "bench"\nbudget_mib = 1024\n'
        f'[source]\nkind = "video"\nuri = "{video}"\n'
        f"[mqtt]\nport = {port}\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2, help="extra copies of the clip in the long run")
    parser.add_argument(
        "--capture-fps", type=float, default=None, help="frame rate of the clip (default: its own, about 30)"
    )
    args = parser.parse_args()
    directory = work_dir()
    short_video = scaled_video(1920, 1080, directory, repeats=1, fps=args.capture_fps)
    long_video = scaled_video(1920, 1080, directory, repeats=1 + args.repeats, fps=args.capture_fps)
    broker = start_broker(directory)
    try:
        short = run_agent(config_text(short_video, broker.port), directory, "short", ("--start", "2026-03-02T09:00:00+00:00"))
        long = run_agent(config_text(long_video, broker.port), directory, "long", ("--start", "2026-03-02T09:00:00+00:00"))
    finally:
        broker.stop()
    frames = long.summary["frames_sampled"] - short.summary["frames_sampled"]
    cpu_ms = 1000 * (long.cpu_s - short.cpu_s) / frames
    budget_line = next(line for line in long.log.splitlines() if "RAM budget:" in line)
    print(f"short run: {short.summary['frames_sampled']} frames, {short.cpu_s:.2f} s CPU, {short.wall_s:.1f} s wall")
    print(f"long run:  {long.summary['frames_sampled']} frames, {long.cpu_s:.2f} s CPU, {long.wall_s:.1f} s wall")
    print(f"CPU per sampled 1920x1080 frame: {cpu_ms:.0f} ms (target <= 50 ms)")
    print(f"peak RSS of the long run: {long.peak_rss_mib:.1f} MiB")
    print(f"start-up budget at 1920x1080: {budget_line.split('RAM budget: ', 1)[1]}")
    shutil.rmtree(directory)


if __name__ == "__main__":
    main()
