"""Inference time per face for each installed TFLite interpreter, and per frame for each detector backend.

Usage:
    python bench/agent_inference.py                      # ai-edge-litert, plus the detectors
    /tmp/tflite-venv/bin/python bench/agent_inference.py --faces-only --interpreter tflite-runtime

The per-face part needs only numpy and the interpreter, so it also runs in a virtual
environment with tflite-runtime (which needs numpy<2). It invokes the bundled int8
emotion model on one 64x64 crop at a time, on one thread. The per-frame part runs each
detector backend with default settings (min_face_px 20) on data/media/multi_face.jpg
scaled to 1280x720 and 1920x1080. Times are medians of wall-clock runs.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
EMOTION_MODEL = REPO_ROOT / "edge_agent" / "models" / "emotion_mini_xception_int8.tflite"


def load_interpreter_class(name: str):
    if name == "ai-edge-litert":
        from ai_edge_litert.interpreter import Interpreter
    else:
        from tflite_runtime.interpreter import Interpreter
    return Interpreter


def median_ms(step, runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        step()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def bench_faces(interpreter_name: str, runs: int) -> None:
    interpreter = load_interpreter_class(interpreter_name)(model_path=str(EMOTION_MODEL), num_threads=1)
    interpreter.allocate_tensors()
    detail = interpreter.get_input_details()[0]
    crop = np.random.default_rng(0).integers(-128, 128, size=detail["shape"], dtype=np.int8)

    def invoke() -> None:
        interpreter.set_tensor(detail["index"], crop)
        interpreter.invoke()

    for _ in range(20):
        invoke()
    print(f"{interpreter_name}: {median_ms(invoke, runs):.3f} ms per face (input {detail['shape'].tolist()}, 1 thread)")


def bench_detectors(runs: int) -> None:
    import cv2

    from edge_agent.config import DetectorConfig
    from edge_agent.faces import create_detector

    photo = cv2.imread(str(REPO_ROOT / "data" / "media" / "multi_face.jpg"))
    for backend in ("blazeface", "haar"):
        detector = create_detector(DetectorConfig(backend=backend))
        for width_px, height_px in ((1280, 720), (1920, 1080)):
            frame = cv2.resize(photo, (width_px, height_px), interpolation=cv2.INTER_AREA)
            faces = len(detector.detect(frame))
            print(
                f"{backend} at {width_px}x{height_px}: {median_ms(lambda: detector.detect(frame), runs):.1f} ms "
                f"per frame, {faces} faces"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interpreter", choices=["ai-edge-litert", "tflite-runtime"], default="ai-edge-litert")
    parser.add_argument("--faces-only", action="store_true", help="skip the detectors (for the tflite-runtime venv)")
    parser.add_argument("--runs", type=int, default=200, help="timed invocations per face measurement")
    args = parser.parse_args()
    bench_faces(args.interpreter, args.runs)
    if not args.faces_only:
        bench_detectors(max(5, args.runs // 20))


if __name__ == "__main__":
    main()
