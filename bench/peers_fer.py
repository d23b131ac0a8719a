"""The `fer` package on the agent's benchmark clip: frames/s per CPU core, peak RSS and install size.

Usage, from the repository root in the project's virtual environment:

    python bench/peers_fer.py [--runs N] [--venv DIR]

fer needs TensorFlow, which the project's environments must not carry, so this script
builds a separate virtual environment (default ``.venv-peers``, about 3 GB; the first
install takes several minutes) and runs fer there in child processes. fer 25.10.3 declares
a dependency on the full ``tensorflow`` and, for MTCNN, a CUDA build of torch, so it is installed
with ``--no-deps`` beside ``tensorflow-cpu``, the CPU wheel of torch and its light
dependencies. It imports ``pkg_resources``, hence ``setuptools<81``. Its MTCNN mode needs
a torchvision that only comes as a CUDA build, so the comparison uses its Haar mode.

Each run is a fresh child process that loads fer and runs ``Video.analyze`` on every
frame of WolfgangLanger_Pexels.mp4 without saving frames or video. Frames/s per core is
the frame count over the CPU time of the analysis (``time.process_time``, which counts
TensorFlow's threads too); peak RSS is the child's ``VmHWM``. The results go into the
``peers`` part of docs/benchmarks/suite.json, and docs/benchmarks/suite.md is rendered
again with the side-by-side table (bench/suite.py fills the agent's side).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

log = logging.getLogger(__name__)

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
VIDEO = REPO_ROOT / "data" / "media" / "WolfgangLanger_Pexels.mp4"
FER_REQUIREMENT = "fer==25.10.3"
# fer's declared dependencies, with tensorflow-cpu for tensorflow, the CPU torch wheel for
# torch and headless OpenCV for opencv-contrib-python; facenet-pytorch (MTCNN) is left out.
PEER_REQUIREMENTS = (
    "tensorflow-cpu",
    "torch==2.13.0",
    "setuptools<81",
    "opencv-python-headless<5",
    "pandas",
    "matplotlib",
    "requests",
    "tqdm>=4.62.1",
    "Pillow",
    "moviepy>=1.0.3,<2",
    "ffmpeg-python>=0.2.0",
)
INSTALLED_MARKER = ".installed-peers"

# Runs inside the peers environment and prints one JSON line.
FER_CHILD = r"""
import json, logging, os, sys, tempfile, time
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from fer.fer import FER
from fer.classes import Video
import cv2, fer, tensorflow
# fer calls cv2.waitKey after every frame and cv2.destroyAllWindows at the end. Headless
# OpenCV raises on both, and since fer opens no window here, both are replaced by no-ops.
cv2.waitKey = lambda delay=0: -1
cv2.destroyAllWindows = lambda: None
logging.getLogger("fer").setLevel(logging.WARNING)
video_path = sys.argv[1]
detector = FER(mtcnn=False)
# analyze returns per-frame emotion columns, not faces, so the faces are counted here.
faces_per_frame = []
detect_emotions = detector.detect_emotions
def counting_detect_emotions(*args, **kwargs):
    faces = detect_emotions(*args, **kwargs)
    faces_per_frame.append(len(faces))
    return faces
detector.detect_emotions = counting_detect_emotions
with tempfile.TemporaryDirectory() as outdir:
    # analyze writes data.csv into the working directory.
    os.chdir(outdir)
    video = Video(video_path, outdir=outdir)
    cpu_start, wall_start = time.process_time(), time.perf_counter()
    video.analyze(
        detector, display=False, frequency=1, save_frames=False, save_video=False,
        annotate_frames=False, zip_images=False,
    )
    cpu_s, wall_s = time.process_time() - cpu_start, time.perf_counter() - wall_start
peak_kib = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({
    "frames": video.frameCount, "faces": sum(faces_per_frame),
    "cpu_s": cpu_s, "wall_s": wall_s, "peak_rss_kib": peak_kib,
    "fer": fer.__version__, "tensorflow": tensorflow.__version__,
}))
"""


class PeerError(RuntimeError):
    """The peers environment could not be built or fer failed; the message names the step and the fix."""


def run_step(command: list[str], what: str) -> str:
    log.info("%s: %s", what, shlex.join(command))
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise PeerError(
            f"{what} failed (exit {done.returncode}): {shlex.join(command)}\n{done.stderr[-3000:]}\n"
            "Check that pip reaches its package index and that the disk has about 4 GB free."
        )
    return done.stdout


def ensure_venv(venv: Path) -> Path:
    """Create and fill the peers environment unless its marker lists the same requirements."""
    python = venv / "bin" / "python"
    marker = venv / INSTALLED_MARKER
    wanted = "\n".join((FER_REQUIREMENT, *PEER_REQUIREMENTS))
    if python.exists() and marker.exists() and marker.read_text() == wanted:
        return python
    started = time.monotonic()
    if not python.exists():
        run_step([sys.executable, "-m", "venv", str(venv)], "creating the peers virtual environment")
    run_step([str(python), "-m", "pip", "install", "-q", "--no-deps", FER_REQUIREMENT], "installing fer")
    run_step(
        [str(python), "-m", "pip", "install", "-q", *PEER_REQUIREMENTS],
        "installing TensorFlow, torch and fer's dependencies (several minutes the first time)",
    )
    marker.write_text(wanted)
    log.info("peers environment ready in %.0f s", time.monotonic() - started)
    return python


def venv_size_mib(venv: Path) -> float:
    output = subprocess.run(["du", "-sk", str(venv)], check=True, capture_output=True, text=True).stdout
    return int(output.split()[0]) / 1024


def run_fer(python: Path) -> dict:
    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    done = subprocess.run(
        [str(python), "-c", FER_CHILD, str(VIDEO)], cwd=REPO_ROOT, capture_output=True, text=True, env=environment
    )
    if done.returncode != 0:
        raise PeerError(f"fer's video analysis of {VIDEO.name} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "low": min(values), "high": max(values), "runs": len(values)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="fresh fer processes to measure (default 3)")
    parser.add_argument("--venv", type=Path, default=REPO_ROOT / ".venv-peers", help="peers virtual environment")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    venv = args.venv.resolve()
    python = ensure_venv(venv)
    results = []
    for run in range(args.runs):
        results.append(run_fer(python))
        result = results[-1]
        log.info(
            "fer run %d: %d frames, %.1f s CPU, %.1f s wall, %.1f frames/s per core, peak RSS %.0f MiB",
            run + 1, result["frames"], result["cpu_s"], result["wall_s"], result["frames"] / result["cpu_s"],
            result["peak_rss_kib"] / 1024,
        )
    frames = results[0]["frames"]
    relative_venv = venv.relative_to(REPO_ROOT) if venv.is_relative_to(REPO_ROOT) else venv.name
    peers = {
        "fer_version": results[0]["fer"],
        "tensorflow": f"tensorflow-cpu {results[0]['tensorflow']}",
        "venv": str(relative_venv),
        "venv_size_mib": venv_size_mib(venv),
        "video": VIDEO.name,
        "frames": frames,
        "faces_per_frame": sum(r["faces"] for r in results) / sum(r["frames"] for r in results),
        "fps_per_core": spread([r["frames"] / r["cpu_s"] for r in results]),
        "fps_wall": spread([r["frames"] / r["wall_s"] for r in results]),
        "peak_rss_mib": spread([r["peak_rss_kib"] / 1024 for r in results]),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": shlex.join(["python", "bench/peers_fer.py", *sys.argv[1:]]),
        "load_average": list(os.getloadavg()),
    }
    # Imported only now: suite loads OpenCV and the agent, which the measurement above does not need.
    sys.path.insert(0, str(BENCH_DIR))
    import suite

    data = suite.load_results()
    data["peers"] = peers
    suite.write_results(data)
    print(
        f"fer: {peers['fps_per_core']['median']:.1f} frames/s per core, "
        f"peak RSS {peers['peak_rss_mib']['median']:.0f} MiB, environment {peers['venv_size_mib']:.0f} MiB"
    )
    print(f"wrote {suite.OUTPUT_JSON.relative_to(REPO_ROOT)} and {suite.OUTPUT_MD.relative_to(REPO_ROOT)}")


if __name__ == "__main__":
    try:
        main()
    except PeerError as error:
        sys.exit(f"peers_fer: {error}")
