"""Emotion classifier and model card on the bundled int8 model, real photos and the real interpreter."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_agent.classifier import MAX_BATCH, EmotionClassifier, crop_faces
from edge_agent.config import DEFAULT_EMOTION_MODEL, DetectorConfig
from edge_agent.errors import ModelError
from edge_agent.faces import FaceBox, create_detector
from edge_agent.model_card import card_path_for, load_model_card
from edge_agent.payload import FER2013_LABELS
from edge_agent.runtime import load_interpreter
from tests.conftest import LABELLED_DIR, MEDIA_DIR

HAPPY_PHOTO = LABELLED_DIR / "0-f15-hao-ph.jpg"


@pytest.fixture(scope="module")
def classifier() -> EmotionClassifier:
    return EmotionClassifier(DEFAULT_EMOTION_MODEL)


@pytest.fixture(scope="module")
def detector():
    return create_detector(DetectorConfig())


@pytest.fixture(scope="module")
def real_crops(detector) -> np.ndarray:
    """64x64 crops of the 5 faces in the bundled group photo."""
    frame = cv2.imread(str(MEDIA_DIR / "multi_face.jpg"))
    crops = crop_faces(frame, detector.detect(frame), 64, 0.2)
    assert len(crops) == 5
    return crops


def copy_model(tmp_path: Path, with_card: bool = True) -> Path:
    target = tmp_path / DEFAULT_EMOTION_MODEL.name
    shutil.copyfile(DEFAULT_EMOTION_MODEL, target)
    if with_card:
        shutil.copyfile(card_path_for(DEFAULT_EMOTION_MODEL), card_path_for(target))
    return target


def edit_card(model_path: Path, **changes) -> None:
    """Apply dotted-key changes ('input.height': 48) to the card beside model_path."""
    card_path = card_path_for(model_path)
    data = json.loads(card_path.read_text())
    for dotted_key, value in changes.items():
        *parents, key = dotted_key.split(".")
        section = data
        for parent in parents:
            section = section[parent]
        section[key] = value
    card_path.write_text(json.dumps(data))


def test_happy_photo_top_label(classifier, detector):
    frame = cv2.imread(str(HAPPY_PHOTO))
    boxes = detector.detect(frame)
    assert len(boxes) == 1
    assert [classifier.labels[index] for index in classifier.classify(frame, boxes)] == ["happy"]


def test_classifier_reads_card(classifier):
    assert classifier.labels == FER2013_LABELS
    assert classifier.input_size == 64
    assert classifier.card.input.crop_margin == classifier.margin
    assert classifier.card.output.kind == "probabilities"


def test_bundled_model_int8_only():
    interpreter = load_interpreter(DEFAULT_EMOTION_MODEL)
    dtypes = {np.dtype(detail["dtype"]).name for detail in interpreter.get_tensor_details()}
    assert dtypes <= {"int8", "int32"}
    assert np.dtype(interpreter.get_input_details()[0]["dtype"]).name == "int8"
    assert np.dtype(interpreter.get_output_details()[0]["dtype"]).name == "int8"


def test_bundled_card_sha256_matches():
    card = load_model_card(DEFAULT_EMOTION_MODEL)
    assert card.sha256 == hashlib.sha256(DEFAULT_EMOTION_MODEL.read_bytes()).hexdigest()
    assert card.file_name == DEFAULT_EMOTION_MODEL.name


def test_bundled_card_records_agreement():
    card = load_model_card(DEFAULT_EMOTION_MODEL)
    assert card.quantization_agreement.argmax_agreement >= 0.97
    assert card.quantization_agreement.crops >= 100
    assert card.source_agreement is not None
    assert card.source_agreement.argmax_agreement >= 0.97


def test_bundled_markdown_card_states_limits():
    text = DEFAULT_EMOTION_MODEL.with_suffix(".md").read_text()
    assert "Article 5(1)(f)" in text
    assert "2 February 2025" in text
    assert "FER2013" in text
    assert load_model_card(DEFAULT_EMOTION_MODEL).sha256 in text


def test_predict_crops_probabilities(classifier, real_crops):
    probabilities = classifier.predict_crops(real_crops)
    assert probabilities.shape == (5, len(FER2013_LABELS))
    assert probabilities.dtype == np.float32
    assert np.all(probabilities >= 0)
    # Seven outputs of step 1/256 each: the sum is 1 within the quantization error.
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=7 / 256)


def test_predict_crops_batch_matches_single(classifier, real_crops):
    many = np.concatenate([real_crops] * 8)
    batched = classifier.predict_crops(many)
    singles = np.concatenate([classifier.predict_crops(crop[np.newaxis]) for crop in many])
    assert classifier._model.batch_capacity == MAX_BATCH
    np.testing.assert_array_equal(batched, singles)


def test_predict_crops_resizes_other_sizes(classifier, real_crops):
    large = np.stack([cv2.resize(crop, (128, 128), interpolation=cv2.INTER_LINEAR) for crop in real_crops])
    assert classifier.predict_crops(large).shape == (5, len(FER2013_LABELS))


def test_predict_crops_empty(classifier):
    assert classifier.predict_crops(np.empty((0, 64, 64), np.uint8)).shape == (0, len(FER2013_LABELS))


def test_classify_without_boxes(classifier):
    assert classifier.classify(np.zeros((100, 100, 3), np.uint8), []) == []


def test_card_input_size_mismatch(tmp_path):
    model_path = copy_model(tmp_path)
    edit_card(model_path, **{"input.height": 48, "input.width": 48})
    with pytest.raises(ModelError) as error:
        EmotionClassifier(model_path)
    assert "(1, 64, 64, 1)" in str(error.value)
    assert "(1, 48, 48, 1)" in str(error.value)


def test_card_label_count_mismatch(tmp_path):
    model_path = copy_model(tmp_path)
    edit_card(model_path, labels=list(FER2013_LABELS[:6]))
    with pytest.raises(ModelError, match="6 labels"):
        EmotionClassifier(model_path)


def test_card_missing(tmp_path):
    model_path = copy_model(tmp_path, with_card=False)
    with pytest.raises(ModelError) as error:
        EmotionClassifier(model_path)
    assert str(card_path_for(model_path)) in str(error.value)


def test_model_missing(tmp_path):
    model_path = tmp_path / "absent.tflite"
    with pytest.raises(ModelError) as error:
        EmotionClassifier(model_path)
    assert str(model_path) in str(error.value)


def test_card_sha256_mismatch(tmp_path):
    model_path = copy_model(tmp_path)
    recorded = "0" * 64
    edit_card(model_path, sha256=recorded)
    with pytest.raises(ModelError) as error:
        load_model_card(model_path)
    assert recorded in str(error.value)
    assert hashlib.sha256(model_path.read_bytes()).hexdigest() in str(error.value)


def test_card_unknown_key(tmp_path):
    model_path = copy_model(tmp_path)
    edit_card(model_path, **{"input.mean": 0.5})
    with pytest.raises(ModelError, match="input.mean"):
        load_model_card(model_path)


def test_card_not_json(tmp_path):
    model_path = copy_model(tmp_path)
    card_path_for(model_path).write_text("{not json")
    with pytest.raises(ModelError, match="Cannot read model card"):
        load_model_card(model_path)


def test_crop_faces_shape():
    frame = np.full((120, 160, 3), 50, np.uint8)
    boxes = [FaceBox(10, 20, 30, 40, 0.9), FaceBox(100, 50, 50, 50, 0.8)]
    crops = crop_faces(frame, boxes, 48, 0.2)
    assert crops.shape == (2, 48, 48)
    assert crops.dtype == np.uint8


def test_crop_faces_no_boxes():
    assert crop_faces(np.zeros((10, 10, 3), np.uint8), [], 64, 0.2).shape == (0, 64, 64)


def test_crop_faces_square_around_center():
    # A white 20x40 box on black: with margin 0 the square crop is 40 px wide, centred on the box,
    # so the white part fills the middle half of the columns and every row.
    frame = np.zeros((100, 100, 3), np.uint8)
    frame[30:70, 40:60] = 255
    crop = crop_faces(frame, [FaceBox(40, 30, 20, 40, 1.0)], 40, 0.0, interpolation="nearest")[0]
    assert np.all(crop[:, 10:30] == 255)
    assert np.all(crop[:, :10] == 0)
    assert np.all(crop[:, 30:] == 0)


def test_crop_faces_margin_widens():
    frame = np.zeros((100, 100, 3), np.uint8)
    frame[40:60, 40:60] = 255
    crop = crop_faces(frame, [FaceBox(40, 40, 20, 20, 1.0)], 40, 1.0, interpolation="nearest")[0]
    # Side 40 px around a 20 px box: the box fills the middle 20 rows and columns.
    assert np.all(crop[10:30, 10:30] == 255)
    assert crop[:10].max() == 0
    assert crop[30:].max() == 0


def test_crop_faces_pads_at_edge():
    # The left column is gray 100 and the rest black. A box at the top-left corner extends past
    # the frame, so the part outside repeats the edge pixels instead of shrinking the face.
    frame = np.zeros((50, 50, 3), np.uint8)
    frame[:, 0] = 100
    crop = crop_faces(frame, [FaceBox(0, 0, 20, 20, 1.0)], 40, 1.0, interpolation="nearest")[0]
    # Side 40 px centred on (10, 10): 10 padded columns, then frame column 0, then black.
    assert np.all(crop[:, :11] == 100)
    assert np.all(crop[:, 11:] == 0)


def test_crop_faces_box_outside_frame():
    frame = np.zeros((50, 50, 3), np.uint8)
    crop = crop_faces(frame, [FaceBox(200, 200, 10, 10, 1.0)], 16, 0.2)[0]
    assert np.all(crop == 128)


def test_crop_faces_rejects_gray_frame():
    with pytest.raises(ValueError, match="uint8"):
        crop_faces(np.zeros((50, 50), np.uint8), [FaceBox(0, 0, 10, 10, 1.0)], 16, 0.2)


@pytest.mark.slow
def test_48px_model_drops_in(tmp_path):
    """A 48x48 model exported by the trainer runs in the classifier by changing only the path."""
    torch = pytest.importorskip("torch", reason="the trainer extra is needed to export a model")
    from edge_agent.model_card import Provenance
    from trainer.checkpoint import Checkpoint, save_checkpoint
    from trainer.cli import main
    from trainer.models import MiniXception

    torch.manual_seed(0)
    provenance = Provenance(
        architecture="mini-Xception",
        source_weights="random initialization",
        source_sha256=hashlib.sha256(b"seed 0").hexdigest(),
        origin="tests/test_classifier.py",
        origin_license="MIT",
        paper="none",
        training_data="none: untrained",
    )
    checkpoint_path = tmp_path / "random48.pt"
    save_checkpoint(
        checkpoint_path, Checkpoint(MiniXception(input_size=48).eval(), FER2013_LABELS, provenance)
    )
    model_path = tmp_path / "random48.tflite"
    arguments = [
        "export",
        str(checkpoint_path),
        "--out",
        str(model_path),
        "--frame-step",
        "24",
        "--min-crops",
        "5",
    ]
    assert main(arguments) == 0

    classifier = EmotionClassifier(model_path)
    assert classifier.input_size == 48
    frame = cv2.imread(str(HAPPY_PHOTO))
    labels = classifier.classify(frame, create_detector(DetectorConfig()).detect(frame))
    assert len(labels) == 1
    assert 0 <= labels[0] < len(FER2013_LABELS)
    interpreter = load_interpreter(model_path)
    assert {np.dtype(detail["dtype"]).name for detail in interpreter.get_tensor_details()} <= {
        "int8",
        "int32",
    }
