"""Inference time per face for each installed TFLite interpreter, and per frame for each detector backend.

Usage:
    python bench/agent_inference.py                      # ai-edge-litert, plus the detectors
    python bench/agent_inference.py --save-float-model /tmp/emotion_float32.tflite
    /tmp/tflite-venv/bin/python bench/agent_inference.py --faces-only --interpreter tflite-runtime \
        --float-model /tmp/emotion_float32.tflite

The per-face part needs only numpy and the interpreter, so it also runs in a virtual
environment with tflite-runtime (which needs numpy<2). It invokes the bundled int8
emotion model, and the same weights as a float32 model, on one 64x64 crop at a time, on
one thread. Without --float-model the float model is exported into a temporary folder
from the bundled Keras weights with ``trainer export-float``, which needs the trainer's
packages; where they are missing (the tflite-runtime environment), pass a file exported
before, for example with --save-float-model. The per-frame part runs each detector
backend with default settings (min_face_px 20) on data/media/multi_face.jpg scaled to
1280x720 and 1920x1080. Times are medians of wall-clock runs.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
EMOTION_MODEL = REPO_ROOT / "edge_agent" / "models" / "emotion_mini_xception_int8.tflite"
KERAS_WEIGHTS = REPO_ROOT / "data" / "weights" / "mini_xception_fer2013.hdf5"


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


def bench_faces(interpreter_name: str, model: Path, runs: int) -> None:
    interpreter = load_interpreter_class(interpreter_name)(model_path=str(model), num_threads=1)
    interpreter.allocate_tensors()
    detail = interpreter.get_input_details()[0]
    generator = np.random.default_rng(0)
    if detail["dtype"] == np.int8:
        crop = generator.integers(-128, 128, size=detail["shape"], dtype=np.int8)
    else:
        # The float model takes gray pixels scaled to -1..1.
        crop = generator.uniform(-1.0, 1.0, size=detail["shape"]).astype(detail["dtype"])

    def invoke() -> None:
        interpreter.set_tensor(detail["index"], crop)
        interpreter.invoke()

    for _ in range(20):
        invoke()
    print(
        f"{interpreter_name}, {model.name} ({model.stat().st_size} bytes): {median_ms(invoke, runs):.3f} ms per face "
        f"(input {np.dtype(detail['dtype']).name} {detail['shape'].tolist()}, 1 thread)"
    )


def export_float_model(path: Path) -> bool:
    """Write the bundled Keras weights as a float32 .tflite file with ``trainer export-float``; False if it fails."""
    command = [sys.executable, "-m", "trainer.cli", "export-float", str(KERAS_WEIGHTS), "--out", str(path)]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["no output"])[-1]
        print(f"float model: not measured, 'trainer export-float' failed: {reason}. Pass --float-model FILE")
        return False
    return True


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
    parser.add_argument(
        "--float-model", type=Path, help="float32 .tflite file to time (default: export one from the Keras weights)"
    )
    parser.add_argument("--save-float-model", type=Path, help="also copy the exported float model to this path")
    args = parser.parse_args()
    if args.float_model is not None and not args.float_model.is_file():
        parser.error(f"--float-model {args.float_model}: file not found; export one with --save-float-model")
    bench_faces(args.interpreter, EMOTION_MODEL, args.runs)
    if args.float_model is not None:
        bench_faces(args.interpreter, args.float_model, args.runs)
    else:
        with tempfile.TemporaryDirectory(prefix="bench-float-") as scratch:
            float_model = Path(scratch) / "emotion_mini_xception_float32.tflite"
            if export_float_model(float_model):
                bench_faces(args.interpreter, float_model, args.runs)
                if args.save_float_model is not None:
                    shutil.copyfile(float_model, args.save_float_model)
    if not args.faces_only:
        bench_detectors(max(5, args.runs // 20))


if __name__ == "__main__":
    main()
