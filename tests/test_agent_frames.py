"""Odd frames through the real detector and classifier after ``prepare_frame``."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edge_agent.capture import prepare_frame
from edge_agent.classifier import EmotionClassifier
from edge_agent.config import DEFAULT_EMOTION_MODEL, DetectorConfig
from edge_agent.faces import create_detector
from tests.conftest import MEDIA_DIR


@pytest.fixture(scope="module")
def pipeline():
    detector = create_detector(DetectorConfig(min_face_px=40))
    classifier = EmotionClassifier(DEFAULT_EMOTION_MODEL)
    return detector, classifier


def analyse(pipeline, image: np.ndarray, max_width_px: int = 1920, max_height_px: int = 1080) -> list[int] | None:
    detector, classifier = pipeline
    frame = prepare_frame(image, max_width_px, max_height_px)
    if frame is None:
        return None
    return classifier.classify(frame, detector.detect(frame))


def photo() -> np.ndarray:
    return cv2.imread(str(MEDIA_DIR / "single_face.jpg"))


def test_color_photo_has_a_face(pipeline):
    assert len(analyse(pipeline, photo())) == 1


def test_grayscale_frame(pipeline):
    assert len(analyse(pipeline, cv2.cvtColor(photo(), cv2.COLOR_BGR2GRAY))) == 1


def test_four_channel_frame(pipeline):
    assert len(analyse(pipeline, cv2.cvtColor(photo(), cv2.COLOR_BGR2BGRA))) == 1


def test_very_large_frame(pipeline):
    # 8K: scaled down to 1920 wide before detection, so the budget's frame size holds.
    image = photo()
    height_px, width_px = image.shape[:2]
    scale = 7680 / width_px
    large = cv2.resize(image, (7680, round(height_px * scale)), interpolation=cv2.INTER_LINEAR)
    assert len(analyse(pipeline, large)) == 1


@pytest.mark.parametrize(
    "image",
    [np.zeros((0, 0, 3), np.uint8), np.zeros((1, 1, 3), np.uint8), np.zeros((0, 640), np.uint8)],
    ids=["empty", "1x1", "empty-gray"],
)
def test_unusable_frame_is_dropped(pipeline, image):
    assert analyse(pipeline, image) is None


def test_blank_frame_has_no_faces(pipeline):
    assert analyse(pipeline, np.full((1080, 1920, 3), 128, np.uint8)) == []
