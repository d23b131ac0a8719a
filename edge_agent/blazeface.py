"""MediaPipe BlazeFace full-range model: input preparation, inference and box decoding.

The model (``face_detection_full_range.tflite``, Apache-2.0) takes a 1x192x192x3 RGB
float tensor in [-1, 1]. It returns, for each of 2304 anchors, 16 regression values
(box centre offset x, y, box width, height, then six keypoints as x, y pairs) in
input pixels, and one score logit. The anchors follow MediaPipe's SSD anchor options
for this model: one layer of stride 4 (a 48x48 grid), anchor centres at the cell
centres (offset 0.5) and a fixed anchor size of the whole input, one anchor per cell.

This module works in the coordinates of one model input. Mapping boxes back to a frame
and merging them across tiles is the job of ``edge_agent.tiling``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge_agent.errors import ModelError
from edge_agent.runtime import load_interpreter

log = logging.getLogger(__name__)

INPUT_SIZE_PX = 192
ANCHOR_STRIDE_PX = 4
ANCHOR_OFFSET = 0.5
VALUES_PER_ANCHOR = 16
# Logits are clipped to this magnitude before the sigmoid so that exp cannot overflow.
SCORE_CLIP = 100.0
# Batch size when the interpreter accepts an Nx192x192x3 input. On a 2-core x86 machine
# (ai-edge-litert, 1 thread) a batch of 4 took 4.1 ms per input against 4.0 to 4.5 ms for
# single inputs, so batching saves at most the per-invoke overhead.
# NOTE: not measured on a Raspberry Pi.
DEFAULT_MAX_BATCH = 4


@dataclass(frozen=True, slots=True)
class Letterbox:
    """Placement of an image region inside a model input: input_px = region_px * scale + pad, per axis."""

    scale_x: float
    scale_y: float
    pad_x_px: int
    pad_y_px: int


@dataclass(frozen=True, slots=True)
class InputDetections:
    """Boxes found in one model input, in input pixels, with scores in [0, 1].

    ``boxes`` has shape (N, 4) as x_min, y_min, x_max, y_max; ``scores`` has shape (N,).
    """

    boxes: np.ndarray
    scores: np.ndarray


def generate_anchor_centers(
    input_size_px: int = INPUT_SIZE_PX, stride_px: int = ANCHOR_STRIDE_PX, offset: float = ANCHOR_OFFSET
) -> np.ndarray:
    """Generate the anchor centres of one SSD layer as an (N, 2) array of x, y in input pixels.

    Anchors run row by row (y outer, x inner), the order of the model's output rows.
    """
    grid_size = int(np.ceil(input_size_px / stride_px))
    cell_positions = (np.arange(grid_size, dtype=np.float32) + offset) * (input_size_px / grid_size)
    grid_y, grid_x = np.meshgrid(cell_positions, cell_positions, indexing="ij")
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


def letterbox_region(
    bgr_region: np.ndarray, input_size_px: int = INPUT_SIZE_PX
) -> tuple[np.ndarray, Letterbox]:
    """Scale a BGR uint8 region to fit the model input, keeping its aspect ratio, and centre it.

    Returns the model input (H, W, 3) as RGB float32 in [-1, 1] and the placement used.
    The padding is black, that is -1 after normalisation.
    """
    height_px, width_px = bgr_region.shape[:2]
    scale = input_size_px / max(height_px, width_px)
    scaled_width_px = min(input_size_px, max(1, round(width_px * scale)))
    scaled_height_px = min(input_size_px, max(1, round(height_px * scale)))
    # INTER_AREA averages the source pixels when shrinking, so small faces are not aliased.
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    scaled = cv2.resize(bgr_region, (scaled_width_px, scaled_height_px), interpolation=interpolation)

    pad_x_px = (input_size_px - scaled_width_px) // 2
    pad_y_px = (input_size_px - scaled_height_px) // 2
    canvas = np.zeros((input_size_px, input_size_px, 3), dtype=np.uint8)
    canvas[pad_y_px : pad_y_px + scaled_height_px, pad_x_px : pad_x_px + scaled_width_px] = scaled

    rgb = cv2.cvtColor(canvas, cv2.COLOR_BGR2RGB)
    model_input = rgb.astype(np.float32) * (2.0 / 255.0) - 1.0
    # The scale per axis differs slightly from ``scale`` because the scaled size is rounded.
    placement = Letterbox(
        scale_x=scaled_width_px / width_px,
        scale_y=scaled_height_px / height_px,
        pad_x_px=pad_x_px,
        pad_y_px=pad_y_px,
    )
    return model_input, placement


class BlazeFaceModel:
    """BlazeFace full-range on a TFLite interpreter, running batches of prepared inputs."""

    def __init__(self, model_path: Path, threads: int = 1, max_batch: int = DEFAULT_MAX_BATCH) -> None:
        self.model_path = Path(model_path)
        self._interpreter = load_interpreter(self.model_path, num_threads=threads)
        self._anchor_centers = generate_anchor_centers()
        self._input_index = self._check_input()
        self._regressor_index, self._classifier_index = self._find_outputs()
        self._batch_size = 1
        self.max_batch = max_batch if self._try_batch(max_batch) else 1
        log.debug("BlazeFace %s runs batches of up to %d inputs", self.model_path, self.max_batch)

    def _check_input(self) -> int:
        details = self._interpreter.get_input_details()
        expected_shape = [1, INPUT_SIZE_PX, INPUT_SIZE_PX, 3]
        accepted = (
            len(details) == 1
            and details[0]["shape"].tolist() == expected_shape
            and details[0]["dtype"] == np.float32
        )
        if not accepted:
            found = [(item["shape"].tolist(), np.dtype(item["dtype"]).name) for item in details]
            raise ModelError(
                f"{self.model_path} is not the BlazeFace full-range model: expected one float32 input of "
                f"shape {expected_shape}, found {found}. Set detector.model to "
                "face_detection_full_range.tflite or remove it to use the bundled one."
            )
        return details[0]["index"]

    def _find_outputs(self) -> tuple[int, int]:
        """Find the regressor and classifier outputs by shape, since tensor names vary between exports."""
        anchor_count = len(self._anchor_centers)
        regressor_index = classifier_index = None
        for item in self._interpreter.get_output_details():
            shape = item["shape"].tolist()
            if shape == [1, anchor_count, VALUES_PER_ANCHOR]:
                regressor_index = item["index"]
            elif shape == [1, anchor_count, 1]:
                classifier_index = item["index"]
        if regressor_index is None or classifier_index is None:
            found = [item["shape"].tolist() for item in self._interpreter.get_output_details()]
            raise ModelError(
                f"{self.model_path} does not have the BlazeFace full-range outputs: expected shapes "
                f"[1, {anchor_count}, {VALUES_PER_ANCHOR}] and [1, {anchor_count}, 1] for a 48x48 "
                f"anchor grid, found {found}. Use the full-range model (the short-range one has 896 anchors)."
            )
        return regressor_index, classifier_index

    def _resize_batch(self, batch_size: int) -> None:
        if batch_size != self._batch_size:
            shape = [batch_size, INPUT_SIZE_PX, INPUT_SIZE_PX, 3]
            self._interpreter.resize_tensor_input(self._input_index, shape)
            self._interpreter.allocate_tensors()
            self._batch_size = batch_size

    def _try_batch(self, batch_size: int) -> bool:
        """Return whether the interpreter runs a batch and returns one anchor set per input."""
        if batch_size <= 1:
            return False
        try:
            self._resize_batch(batch_size)
            zeros = np.zeros((batch_size, INPUT_SIZE_PX, INPUT_SIZE_PX, 3), dtype=np.float32)
            regressors, logits = self._invoke(zeros)
        except (ValueError, RuntimeError) as error:
            log.info(
                "%s does not accept batches of %d inputs, running one at a time: %s",
                self.model_path, batch_size, error,
            )
            # The failed resize may have changed the input shape, so force the resize back to 1.
            self._batch_size = 0
            self._resize_batch(1)
            return False
        expected_rows = batch_size * len(self._anchor_centers)
        accepted = regressors.shape[0] == expected_rows and logits.shape[0] == expected_rows
        if not accepted:
            log.info(
                "%s returns %d anchor rows for a batch of %d inputs (expected %d), running one at a time",
                self.model_path, regressors.shape[0], batch_size, expected_rows,
            )
        self._resize_batch(1)
        return accepted

    def _invoke(self, inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self._interpreter.set_tensor(self._input_index, inputs)
        self._interpreter.invoke()
        regressors = self._interpreter.get_tensor(self._regressor_index).reshape(-1, VALUES_PER_ANCHOR)
        logits = self._interpreter.get_tensor(self._classifier_index).reshape(-1)
        return regressors, logits

    def detect(self, inputs: np.ndarray, score_threshold: float) -> list[InputDetections]:
        """Run prepared inputs of shape (N, 192, 192, 3) and return the boxes above the threshold per input.

        Boxes are not suppressed here: overlapping boxes of one face are all returned.
        """
        anchor_count = len(self._anchor_centers)
        results: list[InputDetections] = []
        for start in range(0, len(inputs), self.max_batch):
            chunk = np.ascontiguousarray(inputs[start : start + self.max_batch], dtype=np.float32)
            self._resize_batch(len(chunk))
            regressors, logits = self._invoke(chunk)
            for offset in range(len(chunk)):
                rows = slice(offset * anchor_count, (offset + 1) * anchor_count)
                scores = sigmoid_scores(logits[rows])
                selected = scores >= score_threshold
                boxes = decode_boxes(regressors[rows][selected], self._anchor_centers[selected])
                results.append(InputDetections(boxes=boxes, scores=scores[selected]))
        return results
