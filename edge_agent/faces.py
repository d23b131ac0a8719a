"""Face detection. Boxes live in memory only: never logged, stored or published."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from edge_agent.config import DetectorConfig


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


def create_detector(config: DetectorConfig) -> FaceDetector:
    """Build the detector backend named in the config."""
    raise NotImplementedError
