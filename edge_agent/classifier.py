"""Emotion classification of detected faces with a fully int8 TFLite model and its card.

``crop_faces`` is the only crop function of the project. The agent uses it at run time and
the trainer uses it to cut calibration and test crops, so a model is quantized and
measured on the same kind of crops it will see.

``EmotionClassifier`` reads labels, input size, crop margin, resize interpolation and
input range from the model card beside the model (``<model>.json``), so a model of
another size with its own card replaces the default without code changes.

Crops, boxes and per-face results stay in memory: this module never logs or stores them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from edge_agent.errors import ModelError
from edge_agent.faces import FaceBox
from edge_agent.model_card import ModelCard, load_model_card
from edge_agent.runtime import load_interpreter

log = logging.getLogger(__name__)

#: Fraction of max(box width, height) added around a face, half on each side. FER2013 faces
#: include the forehead and chin, which BlazeFace boxes cut off. On the bundled posed photos,
#: 0.2 is the smallest margin at which the mini-Xception labels the surprise photo "surprise".
# NOTE: chosen on 4 labelled photos and 1 video only; a retrained model records its own margin.
DEFAULT_MARGIN = 0.2

#: Resize interpolations a card may name, as OpenCV flags.
INTERPOLATIONS = {
    "area": cv2.INTER_AREA,
    "linear": cv2.INTER_LINEAR,
    "cubic": cv2.INTER_CUBIC,
    "nearest": cv2.INTER_NEAREST,
}

# Largest batch passed to one invoke when the interpreter accepts a resized batch dimension.
# On a 2-core x86 machine (ai-edge-litert 2.3, 1 thread) the default model costs about 0.25 ms
# per crop in batches of 32 and 0.28 ms one by one. Batching mainly saves per-invoke overhead.
MAX_BATCH = 32


def crop_faces(
    frame_bgr: np.ndarray,
    boxes: Sequence[FaceBox],
    size: int,
    margin: float = DEFAULT_MARGIN,
    interpolation: str = "area",
) -> np.ndarray:
    """Cut a square gray crop of ``size`` x ``size`` pixels around each box.

    Each crop is centred on its box and has side ``max(width, height) * (1 + margin)`` in
    frame pixels. Parts of the square outside the frame are filled by repeating the edge
    pixels, so a face at the border keeps its scale and position in the crop.

    Returns:
        uint8 array of shape (len(boxes), size, size), gray values 0..255.
    """
    if frame_bgr.ndim != 3 or frame_bgr.shape[2] != 3 or frame_bgr.dtype != np.uint8:
        raise ValueError(
            f"frame_bgr must be a uint8 (H, W, 3) array, got {frame_bgr.dtype} {frame_bgr.shape}"
        )
    if size < 1:
        raise ValueError(f"crop size must be at least 1 pixel, got {size}")
    if margin < 0:
        raise ValueError(f"crop margin must not be negative, got {margin}")
    try:
        flag = INTERPOLATIONS[interpolation]
    except KeyError:
        raise ValueError(
            f"unknown interpolation {interpolation!r}: use one of {sorted(INTERPOLATIONS)}"
        ) from None

    crops = np.empty((len(boxes), size, size), dtype=np.uint8)
    if not boxes:
        return crops
    gray = cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2GRAY)
    frame_height, frame_width = gray.shape
    for index, box in enumerate(boxes):
        side_px = max(1, round(max(box.width, box.height) * (1.0 + margin)))
        left = round(box.x + box.width / 2 - side_px / 2)
        top = round(box.y + box.height / 2 - side_px / 2)
        inside = gray[
            max(top, 0) : max(min(top + side_px, frame_height), 0),
            max(left, 0) : max(min(left + side_px, frame_width), 0),
        ]
        if inside.size == 0:
            # The box lies wholly outside the frame: nothing to repeat, so the crop is mid-gray.
            crops[index] = 128
            continue
        square = cv2.copyMakeBorder(
            inside,
            top=max(-top, 0),
            bottom=max(top + side_px - frame_height, 0),
            left=max(-left, 0),
            right=max(left + side_px - frame_width, 0),
            borderType=cv2.BORDER_REPLICATE,
        )
        crops[index] = cv2.resize(square, (size, size), interpolation=flag)
    return crops


class Int8ImageModel:
    """A fully int8 TFLite image classifier: quantizes gray crops, runs them, dequantizes the output.

    ``pixel_range`` is the range of float values the model's first layer expects for gray
    values 0..255; the input tensor's own scale and zero point turn those into int8.

    Raises ``ModelError`` at construction when the interpreter's input is not
    (1, input_size, input_size, 1) int8 or its output is not (1, num_outputs) int8.
    """

    def __init__(
        self,
        model_path: Path,
        input_size: int,
        num_outputs: int,
        pixel_range: tuple[float, float] = (0.0, 255.0),
        threads: int = 1,
    ) -> None:
        self.model_path = Path(model_path)
        self.input_size = input_size
        self.num_outputs = num_outputs
        self._interpreter = load_interpreter(self.model_path, num_threads=threads)
        self._check_tensors()
        input_details = self._interpreter.get_input_details()[0]
        output_details = self._interpreter.get_output_details()[0]
        self._input_index = input_details["index"]
        self._output_index = output_details["index"]
        input_scale, input_zero_point = input_details["quantization"]
        self.output_scale, self.output_zero_point = output_details["quantization"]

        # int8 = round((low + pixel * (high - low) / 255) / scale) + zero_point, as one lookup table
        # over the 256 gray values, so the per-crop work is a single indexing operation.
        low, high = pixel_range
        real = low + np.arange(256, dtype=np.float64) * (high - low) / 255.0
        self._input_table = np.clip(np.round(real / input_scale) + input_zero_point, -128, 127).astype(
            np.int8
        )

        self.batch_size = 1
        #: Crops per invoke: MAX_BATCH when the model accepts a resized batch dimension, else 1.
        self.batch_capacity = self._probe_batching()

    def _check_tensors(self) -> None:
        input_details = self._interpreter.get_input_details()
        output_details = self._interpreter.get_output_details()
        if len(input_details) != 1 or len(output_details) != 1:
            raise ModelError(
                f"{self.model_path} has {len(input_details)} inputs and {len(output_details)} outputs; "
                "an emotion model must have one of each"
            )
        expected_shape = (1, self.input_size, self.input_size, 1)
        input_shape = tuple(int(dim) for dim in input_details[0]["shape"])
        if input_shape != expected_shape:
            raise ModelError(
                f"{self.model_path} takes input of shape {input_shape}, but its card describes "
                f"{expected_shape} "
                "(batch, height, width, channels): the card belongs to another model; use the card exported "
                "with this file"
            )
        output_shape = tuple(int(dim) for dim in output_details[0]["shape"])
        if output_shape != (1, self.num_outputs):
            raise ModelError(
                f"{self.model_path} has output of shape {output_shape}, but its card lists "
                f"{self.num_outputs} "
                f"labels, so the expected shape is {(1, self.num_outputs)}: use the card exported with "
                "this file"
            )
        for role, details in (("input", input_details[0]), ("output", output_details[0])):
            if details["dtype"] != np.int8:
                raise ModelError(
                    f"{self.model_path} has a {np.dtype(details['dtype']).name} {role} tensor, but the "
                    "classifier "
                    "runs fully int8 models only: export the model with 'trainer export'"
                )
            scale, _ = details["quantization"]
            if scale <= 0:
                raise ModelError(f"{self.model_path}: the {role} tensor has no quantization scale")

    def _probe_batching(self) -> int:
        """Return MAX_BATCH when the interpreter accepts a resized batch dimension, else 1."""
        try:
            self._resize(MAX_BATCH)
            output_shape = tuple(int(dim) for dim in self._interpreter.get_output_details()[0]["shape"])
            capacity = MAX_BATCH if output_shape == (MAX_BATCH, self.num_outputs) else 1
        except (ValueError, RuntimeError) as error:
            log.debug(
                "%s does not accept a batch dimension of %d (%s): running one crop per invoke",
                self.model_path,
                MAX_BATCH,
                error,
            )
            capacity = 1
        try:
            self._resize(1)
        except (ValueError, RuntimeError) as error:
            raise ModelError(f"Cannot allocate {self.model_path} for a batch of 1: {error}") from None
        return capacity

    def _resize(self, batch_size: int) -> None:
        self._interpreter.resize_tensor_input(
            self._input_index, [batch_size, self.input_size, self.input_size, 1]
        )
        self._interpreter.allocate_tensors()
        self.batch_size = batch_size

    def predict(self, crops: np.ndarray) -> np.ndarray:
        """Return the dequantized outputs, float32 of shape (N, num_outputs), for uint8 crops (N, S, S)."""
        expected = (self.input_size, self.input_size)
        if crops.ndim != 3 or crops.shape[1:] != expected or crops.dtype != np.uint8:
            raise ValueError(
                f"crops must be uint8 of shape (N, {self.input_size}, {self.input_size}), "
                f"got {crops.dtype} {crops.shape}"
            )
        outputs = np.empty((len(crops), self.num_outputs), dtype=np.float32)
        quantized = self._input_table[crops][..., np.newaxis]
        for start in range(0, len(crops), self.batch_capacity):
            batch = quantized[start : start + self.batch_capacity]
            if len(batch) != self.batch_size:
                self._resize(len(batch))
            self._interpreter.set_tensor(self._input_index, batch)
            self._interpreter.invoke()
            raw = self._interpreter.get_tensor(self._output_index)
            outputs[start : start + len(batch)] = (
                raw.astype(np.float32) - self.output_zero_point
            ) * self.output_scale
        return outputs


class EmotionClassifier:
    """Emotion model and its card: face boxes in a frame to one label index per face.

    Raises ``ModelError`` at construction when the model or its card is missing or invalid,
    the card's sha256 does not match the file, or the interpreter's tensors disagree with
    the card (input shape, output length) or are not int8.
    """

    def __init__(self, model_path: Path, threads: int = 1) -> None:
        self.model_path = Path(model_path)
        self.card: ModelCard = load_model_card(self.model_path)
        self.labels: tuple[str, ...] = self.card.labels
        self.input_size: int = self.card.input.height
        self.margin: float = self.card.input.crop_margin
        self.interpolation: str = self.card.input.resize_interpolation
        self._model = Int8ImageModel(
            self.model_path,
            input_size=self.input_size,
            num_outputs=len(self.labels),
            pixel_range=self.card.input.pixel_range,
            threads=threads,
        )
        log.info(
            "Emotion model %s (%s): %dx%d gray input, %d labels, batches of up to %d",
            self.model_path.name,
            self.card.model_name,
            self.input_size,
            self.input_size,
            len(self.labels),
            self._model.batch_capacity,
        )

    def predict_crops(self, crops: np.ndarray) -> np.ndarray:
        """Return label probabilities, float32 (N, len(labels)), for uint8 gray crops (N, H, W).

        Crops of another size than the model input are resized with the card's interpolation.
        """
        if crops.ndim != 3 or crops.dtype != np.uint8:
            raise ValueError(
                f"crops must be uint8 of shape (N, height, width), got {crops.dtype} {crops.shape}"
            )
        if crops.shape[1:] != (self.input_size, self.input_size):
            flag = INTERPOLATIONS[self.interpolation]
            size = (self.input_size, self.input_size)
            resized = np.empty((len(crops), *size), dtype=np.uint8)
            for index, crop in enumerate(crops):
                resized[index] = cv2.resize(crop, size, interpolation=flag)
            crops = resized
        return self._model.predict(crops)

    def classify(self, frame_bgr: np.ndarray, boxes: Sequence[FaceBox]) -> list[int]:
        """Return the index into ``labels`` of the most probable emotion for each box, in box order."""
        if not boxes:
            return []
        crops = crop_faces(frame_bgr, boxes, self.input_size, self.margin, self.interpolation)
        return [int(index) for index in self.predict_crops(crops).argmax(axis=1)]
