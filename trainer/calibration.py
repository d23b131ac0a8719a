"""Real face crops for calibrating and measuring an int8 export.

Crops come from the project's own pipeline: every frame of each video (or every
``frame_step``-th) and every photo goes through the agent's face detector, and
``edge_agent.classifier.crop_faces`` cuts the faces. The split into a calibration set
and a held-out set is by the parity of each sampled frame's position in its video:
even positions (and photos, which count as position 0) calibrate the quantizer, odd
ones measure it. With ``frame_step`` 1 these are the even and odd frames. Neighbouring video frames are
similar, but the quantizer only learns value ranges from its set, so odd frames still
test it on inputs it has not seen.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge_agent.classifier import crop_faces
from edge_agent.faces import FaceDetector
from trainer.errors import CalibrationError

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass(frozen=True)
class CropSettings:
    """Face crop geometry and resizing, copied into the model card so the agent crops alike."""

    size: int
    margin: float
    interpolation: str = "area"


@dataclass(frozen=True)
class MediaFrame:
    """One decoded frame with the file it came from, its frame index and its position among
    the sampled frames of that file (both 0 for photos)."""

    source: str
    index: int
    sample_index: int
    image: np.ndarray


@dataclass(frozen=True)
class FaceCrops:
    """Gray face crops (N, size, size) uint8 with, per crop, its source file name, frame index
    and sample position (see ``MediaFrame``)."""

    crops: np.ndarray
    sources: tuple[str, ...]
    frame_indices: np.ndarray
    sample_indices: np.ndarray

    def __len__(self) -> int:
        return len(self.crops)

    def subset(self, mask: np.ndarray) -> FaceCrops:
        """Return the crops where ``mask`` is true."""
        return FaceCrops(
            crops=self.crops[mask],
            sources=tuple(source for source, keep in zip(self.sources, mask, strict=True) if keep),
            frame_indices=self.frame_indices[mask],
            sample_indices=self.sample_indices[mask],
        )


@dataclass(frozen=True)
class CropSplit:
    """Crops that calibrate the quantizer and crops held out to measure the export."""

    calibration: FaceCrops
    held_out: FaceCrops


def default_media(data_dir: Path) -> list[Path]:
    """Return the bundled videos and photos: ``media/*`` and ``labelled/*`` under ``data_dir``."""
    paths: list[Path] = []
    for folder in ("media", "labelled"):
        for path in sorted((Path(data_dir) / folder).iterdir()):
            if path.suffix.lower() in VIDEO_SUFFIXES + IMAGE_SUFFIXES:
                paths.append(path)
    if not paths:
        raise CalibrationError(f"No videos or photos in {data_dir}/media or {data_dir}/labelled")
    return paths


def iter_frames(paths: Sequence[Path], frame_step: int = 1) -> Iterator[MediaFrame]:
    """Yield every ``frame_step``-th frame of each video and each photo, in the order given.

    Raises:
        CalibrationError: a file is missing, has an unknown suffix or cannot be decoded.
    """
    if frame_step < 1:
        raise ValueError(f"frame_step must be at least 1, got {frame_step}")
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise CalibrationError(f"Media file not found: {path}")
        suffix = path.suffix.lower()
        if suffix in IMAGE_SUFFIXES:
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is None:
                raise CalibrationError(f"Cannot decode image {path}")
            yield MediaFrame(path.name, 0, 0, image)
        elif suffix in VIDEO_SUFFIXES:
            yield from _video_frames(path, frame_step)
        else:
            raise CalibrationError(
                f"{path} has suffix {suffix!r}: use a video ({', '.join(VIDEO_SUFFIXES)}) "
                f"or a photo ({', '.join(IMAGE_SUFFIXES)})"
            )


def _video_frames(path: Path, frame_step: int) -> Iterator[MediaFrame]:
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise CalibrationError(f"Cannot open video {path}")
    try:
        index = 0
        while True:
            ok, image = capture.read()
            if not ok:
                break
            if index % frame_step == 0:
                yield MediaFrame(path.name, index, index // frame_step, image)
            index += 1
    finally:
        capture.release()
    if index == 0:
        raise CalibrationError(f"Video {path} has no decodable frames")


def extract_face_crops(
    paths: Sequence[Path], detector: FaceDetector, settings: CropSettings, frame_step: int = 1
) -> FaceCrops:
    """Detect faces in the media and cut one crop per face with ``crop_faces``."""
    crops: list[np.ndarray] = []
    sources: list[str] = []
    indices: list[int] = []
    sample_indices: list[int] = []
    frames = 0
    for frame in iter_frames(paths, frame_step):
        frames += 1
        boxes = detector.detect(frame.image)
        if not boxes:
            continue
        crops.append(crop_faces(frame.image, boxes, settings.size, settings.margin, settings.interpolation))
        sources += [frame.source] * len(boxes)
        indices += [frame.index] * len(boxes)
        sample_indices += [frame.sample_index] * len(boxes)
    log.info("Cut %d face crops from %d frames of %d files", len(sources), frames, len(paths))
    if not crops:
        empty = np.empty(0, np.int64)
        return FaceCrops(np.empty((0, settings.size, settings.size), np.uint8), (), empty, empty)
    return FaceCrops(
        np.concatenate(crops),
        tuple(sources),
        np.asarray(indices, dtype=np.int64),
        np.asarray(sample_indices, dtype=np.int64),
    )


def split_by_frame_parity(crops: FaceCrops, min_crops: int = 1) -> CropSplit:
    """Split into even sample positions and photos (calibration) and odd positions (held out).

    Raises:
        CalibrationError: either set has fewer than ``min_crops`` crops.
    """
    even = crops.sample_indices % 2 == 0
    split = CropSplit(calibration=crops.subset(even), held_out=crops.subset(~even))
    for name, part in (("calibration", split.calibration), ("held-out", split.held_out)):
        if len(part) < min_crops:
            raise CalibrationError(
                f"Only {len(part)} {name} face crops, at least {min_crops} are needed: add videos with "
                "visible faces, or lower --frame-step"
            )
    return split
