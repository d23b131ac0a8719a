"""Quantize BlazeFace full-range to int8 with ai-edge-quantizer, calibrated on the bundled real media.

Run as ``python bench/detector_int8.py OUTPUT.tflite``. It needs the trainer's packages
(ai-edge-quantizer comes with litert-torch). The agent loads the result like the float
model: ``detector.model = "OUTPUT.tflite"``.

The published file stores its weights as float16 behind DEQUANTIZE ops and has no
signature, and ai-edge-quantizer 0.10 accepts neither. So the graph is first rewritten
with float32 weights in place of the DEQUANTIZE ops and a ``serving_default`` signature.
RELU ops are also fused into the op before them. With separate int8 RELU ops, XNNPACK
split the graph into 45 delegate partitions and the model ran 7 times slower than float. The activation ranges are the minimum and maximum over
all calibration inputs: the quantizer's default moving average shrank the input range to
[-0.97, 0.65] and the score logits to at most 0, so the int8 model found no face.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

import cv2
import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as schema
from ai_edge_litert.interpreter import Interpreter

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from edge_agent.blazeface import INPUT_SIZE_PX  # noqa: E402
from edge_agent.config import BLAZEFACE_FLOAT_MODEL  # noqa: E402

log = logging.getLogger(__name__)

MEDIA_DIR = REPO_ROOT / "data" / "media"
LABELLED_DIR = REPO_ROOT / "data" / "labelled"
SIGNATURE_KEY = "serving_default"
# Random square crops per calibration image, as side fractions of its shorter side, so
# the calibration covers faces from small to filling the input.
CROPS_PER_IMAGE = 4
CROP_FRACTIONS = (0.2, 0.6)
VIDEO_FRAME_STEP = 60


def letterbox(bgr: np.ndarray) -> np.ndarray:
    """Scale a BGR image into a black 192x192 input and return it as RGB float32 in [-1, 1]."""
    height_px, width_px = bgr.shape[:2]
    scale = INPUT_SIZE_PX / max(height_px, width_px)
    size = (max(1, round(width_px * scale)), max(1, round(height_px * scale)))
    scaled = cv2.resize(bgr, size, interpolation=cv2.INTER_AREA)
    canvas = np.zeros((INPUT_SIZE_PX, INPUT_SIZE_PX, 3), dtype=np.uint8)
    canvas[: size[1], : size[0]] = scaled
    return cv2.cvtColor(canvas, cv2.COLOR_BGR2RGB).astype(np.float32) * (2.0 / 255.0) - 1.0


def calibration_inputs(seed: int = 0) -> list[np.ndarray]:
    """Return model inputs from the bundled photos and video frames: each whole, and random crops."""
    images = [cv2.imread(str(path)) for path in sorted(MEDIA_DIR.glob("*.jpg")) + sorted(LABELLED_DIR.glob("*.jpg"))]
    capture = cv2.VideoCapture(str(MEDIA_DIR / "WolfgangLanger_Pexels.mp4"))
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        if int(capture.get(cv2.CAP_PROP_POS_FRAMES)) % VIDEO_FRAME_STEP == 1:
            images.append(frame)
    capture.release()

    rng = np.random.default_rng(seed)
    inputs = []
    for image in images:
        inputs.append(letterbox(image))
        height_px, width_px = image.shape[:2]
        for _ in range(CROPS_PER_IMAGE):
            side_px = int(rng.uniform(*CROP_FRACTIONS) * min(height_px, width_px))
            y_px = int(rng.integers(0, height_px - side_px + 1))
            x_px = int(rng.integers(0, width_px - side_px + 1))
            inputs.append(letterbox(image[y_px : y_px + side_px, x_px : x_px + side_px]))
    return inputs


def builtin_name(model: schema.ModelT, op: schema.OperatorT) -> int:
    code = model.operatorCodes[op.opcodeIndex]
    return max(code.builtinCode, code.deprecatedBuiltinCode)


def prepare_float_graph(content: bytes) -> bytes:
    """Rewrite the published model for the quantizer: float32 weights, fused RELUs, a signature."""
    model = schema.ModelT.InitFromPackedBuf(content, 0)
    graph = model.subgraphs[0]

    # Float16 constants behind DEQUANTIZE ops become float32 constants of the op's output.
    kept = []
    for op in graph.operators:
        if builtin_name(model, op) != schema.BuiltinOperator.DEQUANTIZE:
            kept.append(op)
            continue
        source = graph.tensors[op.inputs[0]]
        values = np.frombuffer(bytes(model.buffers[source.buffer].data), dtype=np.float16).astype(np.float32)
        buffer = schema.BufferT()
        buffer.data = np.frombuffer(values.tobytes(), dtype=np.uint8)
        model.buffers.append(buffer)
        graph.tensors[op.outputs[0]].buffer = len(model.buffers) - 1
    graph.operators = kept

    # A RELU whose input comes only from an op with a fusable activation becomes that activation.
    producers = {output: op for op in graph.operators for output in op.outputs}
    readers: dict[int, int] = {}
    for op in graph.operators:
        for tensor in op.inputs:
            readers[tensor] = readers.get(tensor, 0) + 1
    kept = []
    for op in graph.operators:
        producer = producers.get(op.inputs[0]) if builtin_name(model, op) == schema.BuiltinOperator.RELU else None
        options = getattr(producer, "builtinOptions", None)
        fusable = (
            producer is not None
            and readers[op.inputs[0]] == 1
            and getattr(options, "fusedActivationFunction", None) == schema.ActivationFunctionType.NONE
        )
        if fusable:
            options.fusedActivationFunction = schema.ActivationFunctionType.RELU
            producer.outputs = [op.outputs[0]]
        else:
            kept.append(op)
    graph.operators = kept

    # Drop the tensors that no op uses any more, since the quantizer reads every tensor.
    used = set(graph.inputs) | set(graph.outputs)
    for op in graph.operators:
        used |= {tensor for tensor in op.inputs if tensor >= 0} | set(op.outputs)
    old_indices = sorted(used)
    new_index = {old: new for new, old in enumerate(old_indices)}
    graph.tensors = [graph.tensors[old] for old in old_indices]
    graph.inputs = [new_index[tensor] for tensor in graph.inputs]
    graph.outputs = [new_index[tensor] for tensor in graph.outputs]
    for op in graph.operators:
        op.inputs = [new_index[tensor] if tensor >= 0 else tensor for tensor in op.inputs]
        op.outputs = [new_index[tensor] for tensor in op.outputs]
    used_buffers = {tensor.buffer for tensor in graph.tensors}
    for index, buffer in enumerate(model.buffers):
        if index > 0 and index not in used_buffers:
            buffer.data = None

    signature = schema.SignatureDefT()
    signature.signatureKey = SIGNATURE_KEY
    signature.subgraphIndex = 0
    signature.inputs = [tensor_map("input", graph.inputs[0])]
    signature.outputs = [tensor_map(f"output_{index}", tensor) for index, tensor in enumerate(graph.outputs)]
    model.signatureDefs = [signature]

    builder = flatbuffers.Builder(0)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def tensor_map(name: str, index: int) -> schema.TensorMapT:
    mapping = schema.TensorMapT()
    mapping.name = name
    mapping.tensorIndex = index
    return mapping


def min_max_ranges(float_path: Path, tensor_names: list[str], inputs: list[np.ndarray]) -> dict[str, dict]:
    """Run the float graph on every input and return each tensor's minimum and maximum."""
    interpreter = Interpreter(model_path=str(float_path), experimental_preserve_all_tensors=True)
    interpreter.allocate_tensors()
    index_of = {detail["name"]: detail["index"] for detail in interpreter.get_tensor_details()}
    input_index = interpreter.get_input_details()[0]["index"]
    low = {name: np.inf for name in tensor_names}
    high = {name: -np.inf for name in tensor_names}
    for model_input in inputs:
        interpreter.set_tensor(input_index, model_input[np.newaxis])
        interpreter.invoke()
        for name in tensor_names:
            values = interpreter.get_tensor(index_of[name])
            low[name] = min(low[name], float(values.min()))
            high[name] = max(high[name], float(values.max()))
    return {
        name: {"min": np.array([low[name]], np.float32), "max": np.array([high[name]], np.float32)}
        for name in tensor_names
    }


def quantize(float_model: Path, output: Path) -> None:
    """Write an int8 BlazeFace full-range model with int8 input and outputs to ``output``."""
    from ai_edge_quantizer import quantizer, recipe

    with tempfile.TemporaryDirectory() as work_dir:
        prepared = Path(work_dir) / "blazeface_float32_signature.tflite"
        prepared.write_bytes(prepare_float_graph(float_model.read_bytes()))
        quantize_prepared(prepared, output, quantizer, recipe)


def quantize_prepared(prepared: Path, output: Path, quantizer, recipe) -> None:
    """Calibrate the prepared float graph on the bundled media and export the int8 model."""
    inputs = calibration_inputs()
    log.info("Calibrating on %d inputs from the bundled media", len(inputs))

    model_quantizer = quantizer.Quantizer(str(prepared))
    model_quantizer.load_quantization_recipe(recipe.static_wi8_ai8())
    # One sample gives the tensor names; the ranges come from min_max_ranges over all inputs.
    names = list(model_quantizer.calibrate({SIGNATURE_KEY: [{"input": inputs[0][np.newaxis]}]}))
    ranges = min_max_ranges(prepared, names, inputs)
    result = model_quantizer.quantize(ranges)
    result.export_model(str(output), overwrite=True)
    log.info("Wrote %s (%d bytes)", output, output.stat().st_size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path, help="path of the int8 .tflite file to write")
    parser.add_argument(
        "--model", type=Path, default=BLAZEFACE_FLOAT_MODEL, help="float BlazeFace full-range model"
    )
    arguments = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    arguments.output.parent.mkdir(parents=True, exist_ok=True)
    quantize(arguments.model, arguments.output)


if __name__ == "__main__":
    main()
