"""Benchmark the face detector backends: CPU time per frame, faces found per photo, and memory.

Run as ``python bench/detector.py`` from the repository root with the project's virtual
environment. It prints Markdown tables (see docs/benchmarks/detector.md) and, with
``--json FILE``, writes the raw figures.

Every backend runs on one thread (``cv2.setNumThreads(1)`` and ``detector.threads = 1``).
Times are CPU time of this process per ``detect`` call (``time.process_time``), with the
wall time beside it. On a shared machine the wall time also counts waiting for a core.
The variants are the bundled float BlazeFace model, an int8 copy of it made by
``bench/detector_int8.py`` (skipped when ai-edge-quantizer is not installed and no
``--int8-model`` is given), and the Haar cascade.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from edge_agent.config import DetectorConfig  # noqa: E402
from edge_agent.faces import FaceDetector, create_detector  # noqa: E402
from tests.test_faces import (  # noqa: E402
    LABELLED_DIR,
    MEDIA_DIR,
    Photo,
    as_corners,
    build_composite,
    matches,
    read_image,
    read_video_frames,
)

log = logging.getLogger(__name__)

FRAME_SIZES_PX = ((640, 360), (1280, 720), (1920, 1080))
# The first 4 frames of read_video_frames come from WolfgangLanger_Pexels.mp4 (640x360).
VIDEO_FRAME_COUNT = 4
COMPOSITE_SEEDS = (0, 1)


@dataclass(frozen=True)
class Variant:
    """One detector set-up to measure."""

    name: str
    backend: str
    model: Path | None = None
    min_face_px: int = 20

    def config(self) -> DetectorConfig:
        return DetectorConfig(backend=self.backend, model=self.model, min_face_px=self.min_face_px, threads=1)


@dataclass(frozen=True)
class Timing:
    """CPU and wall milliseconds per detect call over several runs, for one variant and input."""

    variant: str
    case: str
    runs: int
    cpu_median_ms: float
    cpu_min_ms: float
    cpu_max_ms: float
    wall_median_ms: float
    faces_per_frame: float


@dataclass(frozen=True)
class PhotoResult:
    """Faces one variant found in one photo, against the expected count or the composite's true faces."""

    variant: str
    photo: str
    expected: int
    found: int
    matched: int
    false_boxes: int


def time_detector(detector: FaceDetector, frames: list[np.ndarray], runs: int) -> tuple[list[float], list[float], float]:
    """Run ``detect`` ``runs`` times over the frames in turn and return CPU ms, wall ms and mean faces."""
    for frame in frames[:2]:
        detector.detect(frame)
    cpu_ms, wall_ms, faces = [], [], []
    for run in range(runs):
        frame = frames[run % len(frames)]
        cpu_start, wall_start = time.process_time(), time.perf_counter()
        found = detector.detect(frame)
        cpu_ms.append((time.process_time() - cpu_start) * 1000)
        wall_ms.append((time.perf_counter() - wall_start) * 1000)
        faces.append(len(found))
    return cpu_ms, wall_ms, float(np.mean(faces))


def measure_times(variant: Variant, cases: dict[str, list[np.ndarray]], runs: int) -> list[Timing]:
    detector = create_detector(variant.config())
    timings = []
    for case, frames in cases.items():
        cpu_ms, wall_ms, faces = time_detector(detector, frames, runs)
        timings.append(
            Timing(
                variant.name, case, runs, statistics.median(cpu_ms), min(cpu_ms), max(cpu_ms),
                statistics.median(wall_ms), faces,
            )
        )
        log.info("%s on %s: %.1f ms CPU (median of %d)", variant.name, case, timings[-1].cpu_median_ms, runs)
    return timings


def count_photo_faces(variant: Variant, photos: dict[str, tuple[np.ndarray, int]], composites: dict) -> list[PhotoResult]:
    detector = create_detector(variant.config())
    results = []
    for name, (image, expected) in photos.items():
        found = len(detector.detect(image))
        results.append(PhotoResult(variant.name, name, expected, found, min(found, expected), max(0, found - expected)))
    for name, composite in composites.items():
        boxes = as_corners(detector.detect(composite.image))
        matched = sum(any(matches(box, truth) for box in boxes) for truth in composite.truth)
        false_boxes = sum(not any(matches(box, truth) for truth in composite.truth) for box in boxes)
        results.append(PhotoResult(variant.name, name, len(composite.truth), len(boxes), matched, false_boxes))
    return results


def measure_rss_mib(variant: Variant, width_px: int, height_px: int) -> float:
    """Return the peak RSS growth, in MiB, of a fresh process that loads the detector and runs one frame."""
    command = [
        sys.executable, __file__, "--rss-child", variant.backend, str(variant.model or ""),
        str(variant.min_face_px), str(width_px), str(height_px),
    ]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return float(output.split()[-1])


def peak_rss_kib() -> int:
    """Return this process's peak RSS in KiB from /proc (Linux).

    ``getrusage`` is no use here: its ``ru_maxrss`` survives ``execve``, so a child
    started from this large parent process would report the parent's peak.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("VmHWM missing from /proc/self/status: peak RSS is only measured on Linux")


def rss_child(backend: str, model: str, min_face_px: int, width_px: int, height_px: int) -> None:
    """Print the peak RSS growth caused by creating a detector and running it on one frame."""
    before_kib = peak_rss_kib()
    config = DetectorConfig(backend=backend, model=Path(model) if model else None, min_face_px=min_face_px)
    detector = create_detector(config)
    detector.detect(np.full((height_px, width_px, 3), 128, dtype=np.uint8))
    after_kib = peak_rss_kib()
    print(f"{(after_kib - before_kib) / 1024:.1f}")


def build_inputs() -> tuple[dict[str, list[np.ndarray]], dict[str, tuple[np.ndarray, int]], dict]:
    """Return the timing cases, the photos with their expected face counts, and the composites."""
    video_frames = read_video_frames()
    cases = {}
    for width_px, height_px in FRAME_SIZES_PX:
        cases[f"video {width_px}x{height_px}"] = [
            cv2.resize(frame, (width_px, height_px), interpolation=cv2.INTER_LINEAR)
            for frame in video_frames[:VIDEO_FRAME_COUNT]
        ]

    photos = {"multi_face.jpg": (read_image(MEDIA_DIR / "multi_face.jpg"), 5)}
    photos["single_face.jpg"] = (read_image(MEDIA_DIR / "single_face.jpg"), 1)
    for path in sorted(LABELLED_DIR.glob("*.jpg")):
        photos[path.name] = (read_image(path), 1)

    # The composite's true boxes are the float BlazeFace detections on the full-size photos,
    # as in tests/test_faces.py.
    reference = create_detector(DetectorConfig())
    sources = [image for image, _ in photos.values()] + video_frames
    composite_photos = [Photo(image=image, faces=reference.detect(image)) for image in sources]
    composites = {f"composite seed {seed}": build_composite(composite_photos, seed) for seed in COMPOSITE_SEEDS}
    cases["composite 1920x1080"] = [composite.image for composite in composites.values()]
    return cases, photos, composites


def print_tables(timings: list[Timing], results: list[PhotoResult], memory: list[dict]) -> None:
    print("\n| variant | input | CPU ms median | CPU ms min-max | wall ms median | faces/frame |")
    print("|---|---|---:|---:|---:|---:|")
    for timing in timings:
        print(
            f"| {timing.variant} | {timing.case} | {timing.cpu_median_ms:.1f} | "
            f"{timing.cpu_min_ms:.1f}-{timing.cpu_max_ms:.1f} | {timing.wall_median_ms:.1f} | "
            f"{timing.faces_per_frame:.1f} |"
        )
    print("\n| variant | photo | expected | found | matched | false |")
    print("|---|---|---:|---:|---:|---:|")
    for result in results:
        print(
            f"| {result.variant} | {result.photo} | {result.expected} | {result.found} | "
            f"{result.matched} | {result.false_boxes} |"
        )
    if memory:
        print("\n| variant | frame | peak RSS growth MiB |")
        print("|---|---|---:|")
        for row in memory:
            print(f"| {row['variant']} | {row['frame']} | {row['rss_mib']:.1f} |")


def int8_model(path: Path | None, work_dir: Path) -> Path | None:
    """Return the int8 model to measure: the given one, or one made now, or None without the quantizer."""
    if path is not None:
        return path
    try:
        import ai_edge_quantizer  # noqa: F401
    except ImportError as error:
        log.warning("Skipping the int8 model: %s", error)
        return None
    # This script's folder is on sys.path when it runs as python bench/detector.py.
    from detector_int8 import quantize

    output = work_dir / "face_detection_full_range_int8.tflite"
    # ai-edge-quantizer prints a summary to stdout, which would end up inside the tables.
    with contextlib.redirect_stdout(sys.stderr):
        quantize(REPO_ROOT / "edge_agent" / "models" / "face_detection_full_range.tflite", output)
    return output


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--rss-child":
        backend, model, min_face_px, width_px, height_px = sys.argv[2:7]
        cv2.setNumThreads(1)
        rss_child(backend, model, int(min_face_px), int(width_px), int(height_px))
        return

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="detect calls timed per variant and input")
    parser.add_argument("--int8-model", type=Path, help="int8 BlazeFace file; default: made by bench/detector_int8.py")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument("--no-memory", action="store_true", help="skip the RSS measurements in child processes")
    arguments = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("edge_agent").setLevel(logging.WARNING)
    cv2.setNumThreads(1)

    with tempfile.TemporaryDirectory() as work_dir:
        int8_path = int8_model(arguments.int8_model, Path(work_dir))
        variants = [Variant("blazeface float", "blazeface")]
        if int8_path is not None:
            variants.append(Variant("blazeface int8", "blazeface", int8_path))
        variants.append(Variant("haar", "haar"))
        close_up = [Variant(f"{variant.name}, min_face_px 60", variant.backend, variant.model, 60) for variant in variants]

        cases, photos, composites = build_inputs()
        video_640 = {"video 640x360": cases["video 640x360"]}
        timings, results, memory = [], [], []
        for variant in variants:
            timings += measure_times(variant, cases, arguments.runs)
        for variant in close_up:
            timings += measure_times(variant, video_640, arguments.runs)
        for variant in variants:
            results += count_photo_faces(variant, photos, composites)
        if not arguments.no_memory:
            for variant in variants:
                for width_px, height_px in FRAME_SIZES_PX[1:]:
                    rss_mib = measure_rss_mib(variant, width_px, height_px)
                    memory.append({"variant": variant.name, "frame": f"{width_px}x{height_px}", "rss_mib": rss_mib})

    print(f"\n{platform.processor() or platform.machine()}, Python {platform.python_version()}, OpenCV {cv2.__version__}")
    print_tables(timings, results, memory)
    if arguments.json:
        figures = {
            "timings": [asdict(timing) for timing in timings],
            "photos": [asdict(result) for result in results],
            "memory": memory,
        }
        arguments.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
