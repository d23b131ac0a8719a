"""Face detection. Boxes live in memory only: never logged, stored or published.

Two backends share the ``FaceDetector`` interface:

- ``BlazeFaceDetector`` runs MediaPipe's BlazeFace full-range model on the pyramid
  levels and tiles that ``edge_agent.tiling`` plans for the frame size and
  ``min_face_px``, and merges the boxes.
- ``HaarDetector`` runs OpenCV's frontal-face Haar cascade. It needs no TFLite
  runtime, but finds fewer faces and, on 1920x1080 frames, takes about 2.5 times as long.

Frame contract of ``detect``: a uint8 array of shape (H, W, 3) in BGR order. Grayscale
(H, W) or (H, W, 1) and BGRA (H, W, 4) frames are converted. A frame with zero size, or
narrower or lower than ``min_face_px``, cannot hold a face of the configured size and
yields an empty list. Any other dtype or shape raises ``ValueError``, and an object
that is not a numpy array raises ``TypeError``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from edge_agent.blazeface import INPUT_ALIGN_PX, INPUT_SIZE_PX, BlazeFaceModel, InputShape
from edge_agent.config import DEFAULT_BLAZEFACE_MODEL, DEFAULT_HAAR_CASCADE, DetectorConfig
from edge_agent.errors import ConfigError, ModelError
from edge_agent.tiling import (
    CUT_MARGIN_MODEL_PX,
    FrameBoxes,
    Level,
    PyramidPlan,
    mark_cut_boxes,
    merge_boxes,
    plan_pyramid,
)

log = logging.getLogger(__name__)

BACKENDS = ("blazeface", "haar")

# Smallest face width, in model input pixels, that BlazeFace full-range finds reliably.
# On 1920x1080 composites of real faces 20 to 40 px wide (built as in tests/test_faces.py,
# seeds 0 to 2, 315 faces), the float model run on the whole composite scaled by s found
# 83 % of the faces at s = 0.6 (12 to 24 model px), 91 % at 0.7, 97 % at 0.8 (16 to 32
# model px) and 99 % at 0.9, with no false box at any scale.
BLAZEFACE_MIN_MODEL_FACE_PX = 16.0
# Largest face width, in model input pixels, that BlazeFace full-range finds reliably.
# Faces of the bundled photos, scaled and centred in a 192x192 input, were all found
# from 40 to 128 px, and 12 of 14 at 150 px.
BLAZEFACE_MAX_MODEL_FACE_PX = 128.0
# Largest model input, in pixels, of one tile. The interpreter's memory arena grows with
# its input: a 384x384 input added 30 MiB of RSS with the float model and 19 MiB with an
# int8 one, a 1536x864 input 214 and 120 MiB (ai-edge-litert 2.3, x86). With 256x256
# tiles the detector took 10 to 15 MiB less and 25 to 40 % more CPU time than with 384x384.
MAX_INPUT_AREA_PX = 384 * 384
# Above the finest level, boxes narrower than this fraction of BLAZEFACE_MIN_MODEL_FACE_PX
# are dropped, because a lower level shows such a face at the minimum size or more, and
# below the minimum the model also returns misplaced boxes. In a 1920x1080 test composite
# a 36 px face shown at 8 model px gave a second box of 11 model px, shifted off the face. The fraction is below 1 so that a face at the level's minimum whose box
# comes out a little small is kept.
COARSE_LEVEL_MIN_BOX_FRACTION = 0.75
# Pyramid plans are cached per frame size. A source that shows more sizes than this clears the cache.
MAX_CACHED_PLANS = 64
# Factor by which the Haar cascade shrinks the image per scale step (OpenCV's default is 1.1).
HAAR_SCALE_FACTOR = 1.1
# Overlapping raw Haar detections needed to accept a face (OpenCV's default is 3). On the
# test composite and the bundled video, 5 found 2 % fewer faces and about as many false ones.
HAAR_MIN_NEIGHBORS = 3


@dataclass(frozen=True, slots=True)
class FaceBox:
    """Axis-aligned face box in frame pixels (top-left corner, size) with its confidence."""

    x: float
    y: float
    width: float
    height: float
    score: float


class FaceDetector(Protocol):
    def detect(self, frame: np.ndarray) -> list[FaceBox]:
        """Return the faces in a BGR uint8 frame of shape (height, width, 3)."""
        ...


def to_bgr_frame(frame: np.ndarray) -> np.ndarray:
    """Convert a grayscale, BGR or BGRA uint8 frame to a contiguous BGR frame of shape (H, W, 3).

    Raises:
        TypeError: the frame is not a numpy array.
        ValueError: the frame is not a uint8 array of shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4).
    """
    if not isinstance(frame, np.ndarray):
        raise TypeError(f"frame must be a numpy array, got {type(frame).__name__}")
    if frame.dtype != np.uint8:
        raise ValueError(
            f"frame dtype is {frame.dtype}, expected uint8: convert 0-255 images with "
            "frame.astype(np.uint8) and scale 0-1 float images by 255 first"
        )
    if frame.ndim == 3 and frame.shape[2] == 1:
        frame = frame[:, :, 0]
    if frame.ndim == 3 and frame.shape[2] == 3:
        return np.ascontiguousarray(frame)
    # cvtColor rejects empty images, so an empty frame becomes an empty BGR array directly.
    if frame.ndim == 2:
        if frame.size == 0:
            return np.zeros((*frame.shape, 3), dtype=np.uint8)
        return cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_GRAY2BGR)
    if frame.ndim == 3 and frame.shape[2] == 4:
        if frame.size == 0:
            return np.zeros((*frame.shape[:2], 3), dtype=np.uint8)
        return cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_BGRA2BGR)
    raise ValueError(
        f"frame shape is {frame.shape}, expected (height, width, 3) BGR, (height, width, 4) BGRA "
        "or (height, width) grayscale"
    )


def is_too_small(frame: np.ndarray, min_face_px: int) -> bool:
    """Return whether the frame is empty or cannot hold a face of ``min_face_px``."""
    height_px, width_px = frame.shape[:2]
    return height_px < min_face_px or width_px < min_face_px


def to_face_boxes(boxes: np.ndarray, scores: np.ndarray, width_px: int, height_px: int) -> list[FaceBox]:
    """Clip (N, 4) x_min, y_min, x_max, y_max boxes to the frame and drop those left without area."""
    faces = []
    for (x_min, y_min, x_max, y_max), score in zip(boxes.tolist(), scores.tolist(), strict=True):
        x_min, x_max = max(0.0, x_min), min(float(width_px), x_max)
        y_min, y_max = max(0.0, y_min), min(float(height_px), y_max)
        if x_max > x_min and y_max > y_min:
            faces.append(FaceBox(x_min, y_min, x_max - x_min, y_max - y_min, score))
    return faces


def scale_image(bgr: np.ndarray, width_px: int, height_px: int) -> np.ndarray:
    """Resize an image, averaging source pixels when it shrinks by more than half."""
    source_height_px, source_width_px = bgr.shape[:2]
    if (width_px, height_px) == (source_width_px, source_height_px):
        return bgr
    # Bilinear sampling reads 2x2 source pixels per output pixel, so it skips pixels and
    # aliases small faces only below half size. Above it, INTER_AREA cost 12.5 ms against
    # 2.5 ms for 1920x1080 to 1536x864 (OpenCV 4.14, one x86 thread), and found as many
    # faces or more in the classroom test composites.
    interpolation = cv2.INTER_AREA if width_px < source_width_px / 2 else cv2.INTER_LINEAR
    return cv2.resize(bgr, (width_px, height_px), interpolation=interpolation)


class BlazeFaceDetector:
    """BlazeFace full-range over an image pyramid of classroom-scale tiles."""

    def __init__(self, config: DetectorConfig, model_path: Path) -> None:
        self.config = config
        self.model = BlazeFaceModel(model_path, threads=config.threads)
        self._plans: dict[tuple[int, int], PyramidPlan] = {}
        self._frame_size_px: tuple[int, int] | None = None

    def plan_for(self, width_px: int, height_px: int) -> PyramidPlan:
        """Return the pyramid plan for a frame size, planning and logging it when the size is new."""
        plan = self._plans.get((width_px, height_px))
        if plan is None:
            if len(self._plans) >= MAX_CACHED_PLANS:
                self._plans.clear()
            # A model that cannot be resized runs on 192x192 tiles only.
            align_px = INPUT_ALIGN_PX if self.model.resizable else INPUT_SIZE_PX
            max_input_area_px = MAX_INPUT_AREA_PX if self.model.resizable else INPUT_SIZE_PX**2
            plan = plan_pyramid(
                width_px,
                height_px,
                self.config.min_face_px,
                BLAZEFACE_MIN_MODEL_FACE_PX,
                BLAZEFACE_MAX_MODEL_FACE_PX,
                max_input_area_px,
                align_px,
            )
            self._plans[(width_px, height_px)] = plan
            levels = ", ".join(
                f"{len(level.tiles)}x {level.tile_width_px}x{level.tile_height_px}" for level in plan.levels
            )
            log.info(
                "Face detection on %dx%d frames with min_face_px %d: %d levels, %d tiles (%s), "
                "%.1f model inputs of 192x192",
                width_px, height_px, self.config.min_face_px, len(plan.levels), plan.tile_count, levels,
                plan.input_area_px / INPUT_SIZE_PX**2,
            )
        return plan

    def detect(self, frame: np.ndarray) -> list[FaceBox]:
        """Return the faces in a frame; see the module docstring for the accepted frames."""
        bgr = to_bgr_frame(frame)
        if is_too_small(bgr, self.config.min_face_px):
            return []
        height_px, width_px = bgr.shape[:2]
        plan = self.plan_for(width_px, height_px)
        if self._frame_size_px != (width_px, height_px):
            # Interpreters of other frame sizes would keep their arenas, tens of MiB each,
            # for example after the agent's start-up run on a frame of the largest size.
            shapes = {InputShape(level.tile_height_px, level.tile_width_px) for level in plan.levels}
            self.model.release_interpreters(keep=shapes)
            self._frame_size_px = (width_px, height_px)

        parts: list[FrameBoxes] = []
        # Each level is scaled from the one before it, which is cheaper than from the frame.
        level_bgr = bgr
        for level in plan.levels:
            level_bgr = scale_image(level_bgr, level.width_px, level.height_px)
            parts += self._detect_level(level_bgr, level, width_px, height_px)
        candidates = FrameBoxes.concatenate(parts)
        kept_indices = merge_boxes(candidates, self.config.nms_iou)
        boxes, scores = candidates.boxes[kept_indices], candidates.scores[kept_indices]
        return to_face_boxes(boxes, scores, width_px, height_px)

    def _prepare_level(self, level_bgr: np.ndarray, level: Level) -> np.ndarray:
        """Pad the level's image black to hold every tile and convert it to model input."""
        canvas = level_bgr
        if (level.canvas_width_px, level.canvas_height_px) != (level.width_px, level.height_px):
            canvas = np.zeros((level.canvas_height_px, level.canvas_width_px, 3), dtype=np.uint8)
            canvas[: level.height_px, : level.width_px] = level_bgr
        return self.model.prepare(cv2.cvtColor(canvas, cv2.COLOR_BGR2RGB))

    def _detect_level(
        self, level_bgr: np.ndarray, level: Level, width_px: int, height_px: int
    ) -> list[FrameBoxes]:
        """Run the model on every tile of a level and return each tile's boxes in frame pixels."""
        model_input = self._prepare_level(level_bgr, level)
        # The level's size is rounded up, so its scale differs slightly between the axes.
        scale_x, scale_y = level.width_px / width_px, level.height_px / height_px
        min_box_model_px = COARSE_LEVEL_MIN_BOX_FRACTION * BLAZEFACE_MIN_MODEL_FACE_PX

        parts = []
        for tile in level.tiles:
            tile_input = model_input[
                tile.y_px : tile.y_px + level.tile_height_px, tile.x_px : tile.x_px + level.tile_width_px
            ]
            found = self.model.detect(np.ascontiguousarray(tile_input), self.config.score_threshold)
            boxes, scores = found.boxes.astype(np.float64), found.scores
            if level.index > 0:
                wide_enough = boxes[:, 2] - boxes[:, 0] >= min_box_model_px
                boxes, scores = boxes[wide_enough], scores[wide_enough]
            boxes[:, [0, 2]] += tile.x_px
            boxes[:, [1, 3]] += tile.y_px
            cut = mark_cut_boxes(boxes, level, tile, CUT_MARGIN_MODEL_PX)
            boxes[:, [0, 2]] /= scale_x
            boxes[:, [1, 3]] /= scale_y
            parts.append(FrameBoxes(boxes=boxes, scores=scores, cut=cut))
        return parts


class HaarDetector:
    """OpenCV Haar cascade detector, whose faces all have score 1.0.

    The cascade gives no calibrated confidence, so ``score_threshold`` does not apply and
    ``HAAR_MIN_NEIGHBORS`` sets how strict it is.
    """

    def __init__(self, config: DetectorConfig, cascade_path: Path) -> None:
        self.config = config
        self.cascade_path = Path(cascade_path)
        if not self.cascade_path.is_file():
            raise ModelError(
                f"Haar cascade not found: {self.cascade_path}. Check detector.model in the config, "
                "or remove it to use the bundled haarcascade_frontalface_default.xml."
            )
        fix = "Point detector.model to an OpenCV cascade XML file like haarcascade_frontalface_default.xml."
        try:
            self.cascade = cv2.CascadeClassifier(str(self.cascade_path))
        except (cv2.error, SystemError) as error:
            # OpenCV 4.x raises SystemError, caused by a cv2.error, when the XML does not parse.
            reason = str(error.__cause__ or error).strip()
            raise ModelError(f"Cannot load {self.cascade_path} as a Haar cascade: {reason}. {fix}") from None
        if self.cascade.empty():
            raise ModelError(
                f"Cannot load {self.cascade_path} as a Haar cascade: OpenCV read no classifier. {fix}"
            )
        # The cascade cannot find faces smaller than its training window (24x24 for the
        # bundled one), so frames are enlarged until min_face_px covers the window.
        window_width_px, _ = self.cascade.getOriginalWindowSize()
        self.upscale = max(1.0, window_width_px / config.min_face_px)

    def detect(self, frame: np.ndarray) -> list[FaceBox]:
        """Return the faces in a frame; see the module docstring for the accepted frames."""
        bgr = to_bgr_frame(frame)
        if is_too_small(bgr, self.config.min_face_px):
            return []
        height_px, width_px = bgr.shape[:2]
        gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
        if self.upscale > 1.0:
            gray = cv2.resize(gray, None, fx=self.upscale, fy=self.upscale, interpolation=cv2.INTER_LINEAR)
        min_size_px = round(self.config.min_face_px * self.upscale)
        rectangles = self.cascade.detectMultiScale(
            gray,
            scaleFactor=HAAR_SCALE_FACTOR,
            minNeighbors=HAAR_MIN_NEIGHBORS,
            minSize=(min_size_px, min_size_px),
        )
        if len(rectangles) == 0:
            return []
        # detectMultiScale returns x, y, width, height rows in the enlarged image.
        rectangles = np.asarray(rectangles, dtype=np.float64) / self.upscale
        boxes = np.concatenate([rectangles[:, :2], rectangles[:, :2] + rectangles[:, 2:]], axis=1)
        return to_face_boxes(boxes, np.ones(len(boxes)), width_px, height_px)


def create_detector(config: DetectorConfig) -> FaceDetector:
    """Build the detector backend named in the config.

    Raises:
        ConfigError: the backend is not one of ``BACKENDS``.
        ModelError: the model file is missing or cannot be loaded.
    """
    if config.backend == "blazeface":
        model_path = Path(config.model) if config.model is not None else DEFAULT_BLAZEFACE_MODEL
        return BlazeFaceDetector(config, model_path)
    if config.backend == "haar":
        cascade_path = Path(config.model) if config.model is not None else DEFAULT_HAAR_CASCADE
        return HaarDetector(config, cascade_path)
    raise ConfigError(f"Unknown detector.backend {config.backend!r}: use one of {', '.join(BACKENDS)}")
