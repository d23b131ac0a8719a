"""Face detection. Boxes live in memory only: never logged, stored or published.

Two backends share the ``FaceDetector`` interface:

- ``BlazeFaceDetector`` runs MediaPipe's BlazeFace full-range model on the tiles that
  ``edge_agent.tiling`` plans for the frame size and ``min_face_px``, plus one
  whole-frame pass, and merges the boxes.
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

from edge_agent.blazeface import INPUT_SIZE_PX, BlazeFaceModel, InputDetections, letterbox_region
from edge_agent.config import DEFAULT_BLAZEFACE_MODEL, DEFAULT_HAAR_CASCADE, DetectorConfig
from edge_agent.errors import ConfigError, ModelError
from edge_agent.tiling import (
    CUT_MARGIN_MODEL_PX,
    FrameBoxes,
    Region,
    TilePlan,
    mark_cut_boxes,
    merge_boxes,
    plan_tiles,
)

log = logging.getLogger(__name__)

BACKENDS = ("blazeface", "haar")

# Smallest face width, in model input pixels, that BlazeFace full-range finds reliably.
# Measured on the 14 faces of the bundled photos and 4 video frames, scaled and pasted
# into a 192x192 input on a flat background (4 positions each, score >= 0.5): 12 px:
# 50/56 found, 14 px: 53/56, 16 px: 55/56, 18 to 32 px: 56/56. Centred, faces of 40 to
# 128 px were all found, and 12 of 14 at 150 px.
BLAZEFACE_MIN_MODEL_FACE_PX = 18.0
# Above the finest level, boxes narrower than this fraction of BLAZEFACE_MIN_MODEL_FACE_PX
# are dropped, because a lower level shows such a face at the minimum size or more, and
# below the minimum the model also returns misplaced boxes. In a 1920x1080 test composite
# a 36 px face (8 model px in an 853 px tile) gave a second box of 11 model px, shifted
# off the face. The fraction is below 1 so that a face at the level's minimum whose box
# comes out a little small is kept.
COARSE_LEVEL_MIN_BOX_FRACTION = 0.75
# Tile plans are cached per frame size. A source that shows more sizes than this clears the cache.
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


class BlazeFaceDetector:
    """BlazeFace full-range over classroom-scale tiles plus a whole-frame pass."""

    def __init__(self, config: DetectorConfig, model_path: Path) -> None:
        self.config = config
        self.model = BlazeFaceModel(model_path, threads=config.threads)
        self._plans: dict[tuple[int, int], TilePlan] = {}

    def plan_for(self, width_px: int, height_px: int) -> TilePlan:
        """Return the tile plan for a frame size, planning and logging it when the size is new."""
        plan = self._plans.get((width_px, height_px))
        if plan is None:
            if len(self._plans) >= MAX_CACHED_PLANS:
                self._plans.clear()
            plan = plan_tiles(
                width_px, height_px, self.config.min_face_px, BLAZEFACE_MIN_MODEL_FACE_PX, INPUT_SIZE_PX
            )
            self._plans[(width_px, height_px)] = plan
            log.info(
                "Face detection on %dx%d frames with min_face_px %d: %d tiles (tile sizes %s px) "
                "plus one whole-frame pass",
                width_px, height_px, self.config.min_face_px, plan.tile_count, list(plan.tile_sizes_px),
            )
        return plan

    def detect(self, frame: np.ndarray) -> list[FaceBox]:
        """Return the faces in a frame; see the module docstring for the accepted frames."""
        bgr = to_bgr_frame(frame)
        if is_too_small(bgr, self.config.min_face_px):
            return []
        height_px, width_px = bgr.shape[:2]
        plan = self.plan_for(width_px, height_px)

        # Regions run one batch at a time: the inputs of all tiles of a 1920x1080 frame
        # together would take about 40 MB of float32.
        parts: list[FrameBoxes] = []
        for start in range(0, len(plan.regions), self.model.max_batch):
            parts += self._detect_regions(bgr, plan.regions[start : start + self.model.max_batch])
        candidates = FrameBoxes.concatenate(parts)
        kept_indices = merge_boxes(candidates, self.config.nms_iou)
        boxes, scores = candidates.boxes[kept_indices], candidates.scores[kept_indices]
        return to_face_boxes(boxes, scores, width_px, height_px)

    def _detect_regions(self, bgr: np.ndarray, regions: tuple[Region, ...]) -> list[FrameBoxes]:
        """Run the model on a batch of frame regions and return each region's boxes in frame pixels."""
        inputs = np.empty((len(regions), INPUT_SIZE_PX, INPUT_SIZE_PX, 3), dtype=np.float32)
        placements = []
        for index, region in enumerate(regions):
            rows = slice(region.y_px, region.y_px + region.height_px)
            columns = slice(region.x_px, region.x_px + region.width_px)
            inputs[index], placement = letterbox_region(bgr[rows, columns])
            placements.append(placement)
        detections = self.model.detect(inputs, self.config.score_threshold)

        height_px, width_px = bgr.shape[:2]
        parts = []
        for region, placement, found in zip(regions, placements, detections, strict=True):
            if region.level > 0:
                min_box_model_px = COARSE_LEVEL_MIN_BOX_FRACTION * BLAZEFACE_MIN_MODEL_FACE_PX
                wide_enough = found.boxes[:, 2] - found.boxes[:, 0] >= min_box_model_px
                found = InputDetections(boxes=found.boxes[wide_enough], scores=found.scores[wide_enough])
            boxes = found.boxes.astype(np.float64)
            boxes[:, [0, 2]] = (boxes[:, [0, 2]] - placement.pad_x_px) / placement.scale_x + region.x_px
            boxes[:, [1, 3]] = (boxes[:, [1, 3]] - placement.pad_y_px) / placement.scale_y + region.y_px
            margin_px = CUT_MARGIN_MODEL_PX / placement.scale_x
            cut = mark_cut_boxes(boxes, region, width_px, height_px, margin_px)
            parts.append(FrameBoxes(boxes=boxes, scores=found.scores, cut=cut))
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
