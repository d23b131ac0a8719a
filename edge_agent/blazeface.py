"""MediaPipe BlazeFace full-range model: input sizes, inference and box decoding.

The model (``face_detection_full_range.tflite``, Apache-2.0) takes a 1x192x192x3 RGB
float tensor in [-1, 1]. It returns, for each anchor, 16 regression values (box centre
offset x, y, box width, height, then six keypoints as x, y pairs) in input pixels, and
one score logit. The anchors follow MediaPipe's SSD anchor options for this model: one
layer of stride 4, anchor centres at the cell centres (offset 0.5) and a fixed anchor
size of the whole input, one anchor per cell.

The network is convolutional up to two reshapes to (1, -1, 16) and (1, -1, 1), except
for three bilinear upsampling ops whose output sizes are constants in the file (12, 24
and 48 for a 192 px input). ``resize_model_input`` rewrites the input shape and those
constants, so one interpreter runs on any input whose sides are multiples of
``INPUT_ALIGN_PX``, with a 4 px anchor grid over the whole input. The box regressions
are in input pixels whatever the input size. ``interpreter.resize_tensor_input`` alone
does not work: the upsampling sizes stay those of 192 px and preparing the graph fails.

Int8 versions of the model with the same graph (one int8 input and outputs with
scale and zero point) also work: inputs are quantized and outputs dequantized here.

This module works in the coordinates of one model input. Mapping boxes back to a frame
and merging them across tiles is the job of ``edge_agent.tiling``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge_agent.errors import ModelError
from edge_agent.runtime import allocate_tensors, load_interpreter

log = logging.getLogger(__name__)

INPUT_SIZE_PX = 192
# The network halves the input five times (one stride-2 convolution, four max pools), so
# input sides must be multiples of 32 for its upsampled features to line up.
INPUT_ALIGN_PX = 32
ANCHOR_STRIDE_PX = 4
ANCHOR_OFFSET = 0.5
VALUES_PER_ANCHOR = 16
# Logits are clipped to this magnitude before the sigmoid so that exp cannot overflow.
SCORE_CLIP = 100.0
# Interpreters are cached per input shape. A caller that asks for more shapes clears the cache.
MAX_CACHED_INTERPRETERS = 8


@dataclass(frozen=True, slots=True)
class InputDetections:
    """Boxes found in one model input, in input pixels, with scores in [0, 1].

    ``boxes`` has shape (N, 4) as x_min, y_min, x_max, y_max; ``scores`` has shape (N,).
    """

    boxes: np.ndarray
    scores: np.ndarray


@dataclass(frozen=True, slots=True)
class InputShape:
    """Height and width of a model input in pixels, both multiples of ``INPUT_ALIGN_PX``."""

    height_px: int
    width_px: int


def generate_anchor_centers(
    height_px: int = INPUT_SIZE_PX,
    width_px: int = INPUT_SIZE_PX,
    stride_px: int = ANCHOR_STRIDE_PX,
    offset: float = ANCHOR_OFFSET,
) -> np.ndarray:
    """Generate the anchor centres of one SSD layer as an (N, 2) array of x, y in input pixels.

    Anchors run row by row (y outer, x inner), the order of the model's output rows.
    """
    rows = np.arange(height_px // stride_px, dtype=np.float32)
    columns = np.arange(width_px // stride_px, dtype=np.float32)
    grid_y, grid_x = np.meshgrid((rows + offset) * stride_px, (columns + offset) * stride_px, indexing="ij")
    return np.stack([grid_x.ravel(), grid_y.ravel()], axis=1)


def decode_boxes(regressors: np.ndarray, anchor_centers: np.ndarray) -> np.ndarray:
    """Decode (N, 16) regressor rows into (N, 4) boxes x_min, y_min, x_max, y_max in input pixels.

    The model regresses centre offsets and sizes in input pixels: in normalised units they
    are divided by the scale 192 and multiplied by the fixed anchor size 1, which in pixels
    leaves them as they are.
    """
    center_x = anchor_centers[:, 0] + regressors[:, 0]
    center_y = anchor_centers[:, 1] + regressors[:, 1]
    half_width = regressors[:, 2] / 2
    half_height = regressors[:, 3] / 2
    return np.stack(
        [center_x - half_width, center_y - half_height, center_x + half_width, center_y + half_height], axis=1
    )


def sigmoid_scores(logits: np.ndarray) -> np.ndarray:
    """Turn score logits into probabilities, clipping them first so exp cannot overflow."""
    clipped = np.clip(logits.astype(np.float32), -SCORE_CLIP, SCORE_CLIP)
    return 1.0 / (1.0 + np.exp(-clipped))


def aligned_px(length_px: float) -> int:
    """Round a length up to the next multiple of ``INPUT_ALIGN_PX``."""
    return max(INPUT_ALIGN_PX, -(-int(np.ceil(length_px)) // INPUT_ALIGN_PX) * INPUT_ALIGN_PX)


def resize_model_input(model_content: bytes, shape: InputShape) -> bytes:
    """Return a copy of the BlazeFace full-range flatbuffer that takes an input of ``shape``.

    Rewrites the input tensor's shape and the output sizes of the bilinear upsampling ops
    in place. Their sizes scale with the input: 192 / 16, / 8 and / 4 in the original.

    Raises:
        ModelError: the TFLite schema module is missing (it comes with ai-edge-litert), or
            the graph is not the full-range one.
    """
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:
        raise ModelError(
            "Resizing the BlazeFace input needs the TFLite schema of ai-edge-litert: "
            "install ai-edge-litert (pip install ai-edge-litert)"
        ) from None
    if shape.height_px % INPUT_ALIGN_PX or shape.width_px % INPUT_ALIGN_PX:
        raise ValueError(f"input {shape} is not a multiple of {INPUT_ALIGN_PX} px on both sides")

    # The generated readers return numpy views into this buffer, so writes go to the copy.
    data = bytearray(model_content)
    model = schema.Model.GetRootAs(data, 0)
    graph = model.Subgraphs(0)
    input_shape = graph.Tensors(graph.Inputs(0)).ShapeAsNumpy()
    input_shape[1], input_shape[2] = shape.height_px, shape.width_px

    resized_ops = 0
    for op_index in range(graph.OperatorsLength()):
        op = graph.Operators(op_index)
        code = model.OperatorCodes(op.OpcodeIndex())
        if max(code.BuiltinCode(), code.DeprecatedBuiltinCode()) != schema.BuiltinOperator.RESIZE_BILINEAR:
            continue
        size_buffer = model.Buffers(graph.Tensors(op.Inputs(1)).Buffer())
        # Files over 2 GB, and some quantizer outputs, keep constants after the flatbuffer at an offset.
        if size_buffer.Offset() > 1:
            size_px = np.frombuffer(data, dtype=np.int32, count=2, offset=size_buffer.Offset())
        else:
            size_px = size_buffer.DataAsNumpy().view(np.int32)
        input_stride = INPUT_SIZE_PX // int(size_px[0])
        size_px[0] = shape.height_px // input_stride
        size_px[1] = shape.width_px // input_stride
        resized_ops += 1
    if resized_ops != 3:
        raise ModelError(
            f"the model has {resized_ops} bilinear upsampling ops, expected 3: use "
            "face_detection_full_range.tflite or an int8 copy of it made by bench/detector_int8.py"
        )
    return bytes(data)


class BlazeFaceModel:
    """BlazeFace full-range on TFLite interpreters, one per input shape, fed RGB uint8 images."""

    def __init__(self, model_path: Path, threads: int = 1) -> None:
        self.model_path = Path(model_path)
        self.threads = threads
        # Allocated only if the model turns out not to be resizable (see _check_resizable).
        native = load_interpreter(self.model_path, num_threads=threads, allocate=False)
        self._input = self._check_input(native)
        self._regressor, self._classifier = self._find_outputs(native, len(generate_anchor_centers()))
        self._input_lut = self._input_table()
        self._content: bytes | None = None
        self._interpreter_type = type(native)
        self._interpreters: dict[InputShape, Any] = {InputShape(INPUT_SIZE_PX, INPUT_SIZE_PX): native}
        self._anchors: dict[InputShape, np.ndarray] = {}
        self.resizable = self._check_resizable()
        if self.resizable:
            # Each interpreter keeps its own memory arena and packed weights, about 13 MiB
            # for the float model, so the 192x192 one is dropped until a plan needs it.
            self._interpreters.clear()
        else:
            allocate_tensors(native, self.model_path)

    @property
    def input_dtype(self) -> np.dtype:
        """Element type of the model input: float32 for the published model, int8 for a quantized one."""
        return np.dtype(self._input["dtype"])

    def _check_input(self, interpreter: Any) -> dict:
        details = interpreter.get_input_details()
        expected_shape = [1, INPUT_SIZE_PX, INPUT_SIZE_PX, 3]
        accepted = (
            len(details) == 1
            and details[0]["shape"].tolist() == expected_shape
            and np.dtype(details[0]["dtype"]) in (np.float32, np.int8)
        )
        if not accepted:
            found = [(item["shape"].tolist(), np.dtype(item["dtype"]).name) for item in details]
            raise ModelError(
                f"{self.model_path} is not the BlazeFace full-range model: expected one float32 or int8 input "
                f"of shape {expected_shape}, found {found}. Set detector.model to "
                "face_detection_full_range.tflite or remove it to use the bundled one."
            )
        return details[0]

    def _find_outputs(self, interpreter: Any, anchor_count: int) -> tuple[dict, dict]:
        """Find the regressor and classifier outputs by shape, since tensor names vary between exports."""
        regressor = classifier = None
        for item in interpreter.get_output_details():
            shape = item["shape"].tolist()
            if shape == [1, anchor_count, VALUES_PER_ANCHOR]:
                regressor = item
            elif shape == [1, anchor_count, 1]:
                classifier = item
        if regressor is None or classifier is None:
            found = [item["shape"].tolist() for item in interpreter.get_output_details()]
            raise ModelError(
                f"{self.model_path} does not have the BlazeFace full-range outputs: expected shapes "
                f"[1, {anchor_count}, {VALUES_PER_ANCHOR}] and [1, {anchor_count}, 1] for a 48x48 "
                f"anchor grid, found {found}. Use the full-range model (the short-range one has 896 anchors)."
            )
        return regressor, classifier

    def _input_table(self) -> np.ndarray:
        """Build the 256-entry table from a uint8 pixel to the model's input value, [-1, 1] as float or int8."""
        values = np.arange(256, dtype=np.float32) * (2.0 / 255.0) - 1.0
        if self.input_dtype == np.float32:
            return values
        scale, zero_point = self._input["quantization"]
        return np.clip(np.round(values / scale + zero_point), -128, 127).astype(np.int8)

    def _check_resizable(self) -> bool:
        """Return whether the model's graph can take inputs other than 192x192 (see ``resize_model_input``).

        Only the flatbuffer is checked here; building an interpreter for a probe shape
        would cost its packed weights at start-up. A resized graph that the runtime then
        cannot prepare fails in ``interpreter_for`` with a ``ModelError``.
        """
        try:
            self._content = self.model_path.read_bytes()
            resize_model_input(self._content, InputShape(2 * INPUT_ALIGN_PX, 3 * INPUT_ALIGN_PX))
        except (ModelError, ValueError, RuntimeError) as error:
            log.info("%s runs on 192x192 inputs only: %s", self.model_path, error)
            self._content = None
            return False
        return True

    def interpreter_for(self, shape: InputShape) -> Any:
        """Return an interpreter whose input has ``shape``, creating and caching it when new."""
        interpreter = self._interpreters.get(shape)
        if interpreter is not None:
            return interpreter
        if self._content is None:
            raise ValueError(f"{self.model_path} takes 192x192 inputs only, not {shape}")
        if len(self._interpreters) >= MAX_CACHED_INTERPRETERS:
            self._interpreters.clear()
        try:
            interpreter = self._interpreter_type(
                model_content=resize_model_input(self._content, shape), num_threads=self.threads
            )
            interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as error:
            raise ModelError(f"Cannot run {self.model_path} on a {shape} input: {error}") from None
        anchor_count = (shape.height_px // ANCHOR_STRIDE_PX) * (shape.width_px // ANCHOR_STRIDE_PX)
        self._find_outputs(interpreter, anchor_count)
        self._interpreters[shape] = interpreter
        log.debug("BlazeFace %s: new interpreter for %dx%d inputs", self.model_path, shape.width_px, shape.height_px)
        return interpreter

    def release_interpreters(self, keep: set[InputShape]) -> None:
        """Free the interpreters, with their memory arenas, of every input shape not in ``keep``."""
        for shape in [shape for shape in self._interpreters if shape not in keep]:
            del self._interpreters[shape]
            self._anchors.pop(shape, None)

    def anchors_for(self, shape: InputShape) -> np.ndarray:
        """Return the anchor centres of an input shape."""
        anchors = self._anchors.get(shape)
        if anchors is None:
            anchors = generate_anchor_centers(shape.height_px, shape.width_px)
            self._anchors[shape] = anchors
        return anchors

    def prepare(self, rgb: np.ndarray) -> np.ndarray:
        """Convert an RGB uint8 image to the model's input values, keeping its shape."""
        return cv2.LUT(rgb, self._input_lut)

    def _output(self, interpreter: Any, details: dict, values_per_anchor: int) -> np.ndarray:
        values = interpreter.get_tensor(details["index"]).reshape(-1, values_per_anchor)
        if np.dtype(details["dtype"]) == np.float32:
            return values
        scale, zero_point = details["quantization"]
        return (values.astype(np.float32) - zero_point) * scale

    def invoke(self, model_input: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Run one prepared input of shape (H, W, 3) and return the (N, 16) regressors and (N,) logits."""
        shape = InputShape(*model_input.shape[:2])
        interpreter = self.interpreter_for(shape)
        interpreter.set_tensor(self._input["index"], model_input[np.newaxis])
        interpreter.invoke()
        # Output tensor indices are the same in every resized copy of the graph.
        regressors = self._output(interpreter, self._regressor, VALUES_PER_ANCHOR)
        logits = self._output(interpreter, self._classifier, 1).reshape(-1)
        return regressors, logits

    def detect(self, model_input: np.ndarray, score_threshold: float) -> InputDetections:
        """Run one prepared input and return its boxes above the threshold, in input pixels.

        Boxes are not suppressed here: overlapping boxes of one face are all returned.
        """
        regressors, logits = self.invoke(model_input)
        scores = sigmoid_scores(logits)
        selected = scores >= score_threshold
        anchors = self.anchors_for(InputShape(*model_input.shape[:2]))
        boxes = decode_boxes(regressors[selected], anchors[selected])
        return InputDetections(boxes=boxes, scores=scores[selected])
