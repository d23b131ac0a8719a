"""Shared set-up of the agent benchmarks: scaled test videos, a private broker, and agent runs."""

from __future__ import annotations

import json
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import cv2

REPO_ROOT = Path(__file__).resolve().parent.parent
SOURCE_VIDEO = REPO_ROOT / "data" / "media" / "WolfgangLanger_Pexels.mp4"


def scaled_video(
    width_px: int, height_px: int, directory: Path, repeats: int = 1, fps: float | None = None
) -> Path:
    """Write the bundled 640x360 clip scaled to the given size (MJPEG AVI), ``repeats`` times in a row.

    With ``fps`` below the clip's own rate (about 30), frames are dropped so that the file
    plays at ``fps`` over the same duration, as a camera set to that rate would deliver it.
    """
    suffix = f"-{fps:g}fps" if fps else ""
    path = directory / f"clip-{width_px}x{height_px}-x{repeats}{suffix}.avi"
    if path.exists():
        return path
    writer = None
    # Frames are streamed, never collected: a list of them would inflate this process,
    # and with it the peak RSS that forked agent processes inherit in ru_maxrss.
    for _ in range(repeats):
        reader = cv2.VideoCapture(str(SOURCE_VIDEO))
        source_fps = reader.get(cv2.CAP_PROP_FPS)
        output_fps = min(fps, source_fps) if fps else source_fps
        if writer is None:
            fourcc = cv2.VideoWriter_fourcc(*"MJPG")
            writer = cv2.VideoWriter(str(path), fourcc, output_fps, (width_px, height_px))
        index = written = 0
        while True:
            ok, frame = reader.read()
            if not ok:
                break
            # Keep a frame when the output timeline has reached its source time.
            if written <= index * output_fps / source_fps + 1e-6:
                writer.write(cv2.resize(frame, (width_px, height_px), interpolation=cv2.INTER_LINEAR))
                written += 1
            index += 1
        reader.release()
    writer.release()
    return path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Broker:
    port: int
    process: subprocess.Popen

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


def start_broker(directory: Path) -> Broker:
    port = free_port()
    config = directory / "mosquitto.conf"
    config.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    executable = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    process = subprocess.Popen([executable, "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return Broker(port, process)
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("mosquitto did not start")


@dataclass
class AgentRun:
    """Resources of one finished ``edge-agent run`` subprocess."""

    cpu_s: float
    peak_rss_mib: float
    wall_s: float
    summary: dict
    log: str


def run_agent(config_text: str, directory: Path, name: str, extra_args: tuple[str, ...] = ()) -> AgentRun:
    """Run the agent to the end of its source and return its CPU time, peak RSS and summary."""
    config = directory / f"{name}.toml"
    config.write_text(config_text)
    summary_path = directory / f"{name}-summary.json"
    log_path = directory / f"{name}.log"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    with log_path.open("w") as log_file:
        subprocess.run(
            [sys.executable, "-m", "edge_agent.cli", "run", "--config", str(config), "--summary-json",
             str(summary_path), *extra_args],
            cwd=REPO_ROOT, stdout=log_file, stderr=subprocess.STDOUT, check=True,
        )
    wall_s = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    # ru_maxrss (KiB on Linux) survives execve, so it is the larger of this process's
    # peak at the fork and the agent's peak. The check below rejects a result that could
    # be this process's.
    own_peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    peak_rss_mib = after.ru_maxrss / 1024
    if peak_rss_mib <= own_peak_mib:
        raise RuntimeError(
            f"child peak RSS {peak_rss_mib:.1f} MiB is not above this process's {own_peak_mib:.1f} MiB, "
            "so it may be this process's: run the benchmark in a fresh interpreter"
        )
    return AgentRun(cpu_s, peak_rss_mib, wall_s, json.loads(summary_path.read_text()), log_path.read_text())


def work_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="edge-agent-bench-"))
