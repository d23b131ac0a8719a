"""Quantization-aware training and the float export, on generated FER2013-shaped data.

One short ``trainer fit`` run (module scope) carries a ``quantization`` section in its config.
``trainer export --config`` reads it back from the run's saved config.yaml, fine-tunes the
model with fake int8 quantization and writes a fully int8 file with its card. Accuracy
figures here show that the code paths work, not how a model does on faces.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from edge_agent.classifier import Int8ImageModel
from edge_agent.runtime import load_interpreter
from tests.test_trainer_run import SIZES, write_run_config
from trainer.cli import main
from trainer.data import ImageSet
from trainer.errors import ConfigError
from trainer.evaluation import predict_graph
from trainer.export import predict_float, predict_float_tflite, verify_int8_only, write_quantized_tflite
from trainer.models import RAW_PIXEL_RANGE, fold_input_scaling
from trainer.qat import train_qat
from trainer.quantization import QuantizationSettings, load_settings, method_of
from trainer.synthetic import write_fer2013_csv
from trainer.trained import load_trained

QAT_SECTION = {"method": "qat", "epochs": 2, "learning_rate": 0.0002, "batch_size": 32}
#: Largest accuracy gap between the .tflite file (agent runtime) and the quantized PyTorch graph it
#: was converted from. Both run int8 arithmetic but round requantization differently, so a few
#: borderline images may flip: 3 points is 2-3 of the 84 test images.
SIMULATED_TOLERANCE = 0.03
#: One step of the int8 output grid (scale 1/256). The file and the graph it came from give the
#: same output on most images and differ by a few steps where an intermediate value rounds the
#: other way. A wrong scale or zero point would move probabilities by far more than 16 steps.
PROBABILITY_STEP = 1 / 256


@pytest.fixture(scope="module")
def fer_csv(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "fer2013.csv"
    write_fer2013_csv(path, SIZES, seed=11)
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory, fer_csv) -> Path:
    """Run directory of an 8-epoch ds_cnn fit whose config has a QAT ``quantization`` section."""
    folder = tmp_path_factory.mktemp("fit")
    config_path = write_run_config(folder / "config.yaml", int8_size=False)
    config = yaml.safe_load(config_path.read_text())
    config["quantization"] = QAT_SECTION
    config_path.write_text(yaml.safe_dump(config))
    arguments = [
        "fit", "--config", str(config_path), "--data.path", str(fer_csv), "--data.batch_size", "32",
        "--trainer.max_epochs", "8", "--model.learning_rate", "0.005",
    ]
    assert main(arguments) == 0
    return folder / "runs" / "test" / "version_0"


@pytest.fixture(scope="module")
def qat_exported(tmp_path_factory, trained) -> Path:
    output = tmp_path_factory.mktemp("export") / "emotion_ds_cnn_qat.tflite"
    checkpoint = trained / "checkpoints" / "last.ckpt"
    # The run's saved config is a whole Lightning config; the export reads only its quantization section.
    arguments = ["export", str(checkpoint), "--out", str(output), "--config", str(trained / "config.yaml")]
    assert main(arguments) == 0
    return output


def write_yaml(path: Path, document) -> Path:
    path.write_text(yaml.safe_dump(document))
    return path


@pytest.mark.slow
def test_fit_config_keeps_quantization(trained):
    saved = yaml.safe_load((trained / "config.yaml").read_text())
    assert saved["quantization"] == QAT_SECTION


@pytest.mark.slow
def test_qat_export_int8_only(qat_exported):
    interpreter = load_interpreter(qat_exported)
    dtypes = {np.dtype(detail["dtype"]).name for detail in interpreter.get_tensor_details()}
    assert dtypes <= {"int8", "int32"}
    assert interpreter.get_input_details()[0]["quantization"] == (1.0, -128)
    output_scale, output_zero_point = interpreter.get_output_details()[0]["quantization"]
    assert output_scale == pytest.approx(1 / 256)
    assert output_zero_point == -128
    assert not list(qat_exported.parent.glob(".export-*"))


@pytest.mark.slow
def test_qat_card_names_method(qat_exported):
    card = json.loads(qat_exported.with_suffix(".json").read_text())
    scheme = card["export"]["quantization"]
    assert method_of(scheme) == "qat"
    assert card["export"]["method"] == "qat"
    assert card["export"]["qat_epochs"] == QAT_SECTION["epochs"]
    assert card["export"]["qat_learning_rate"] == QAT_SECTION["learning_rate"]
    assert "2 epochs" in scheme
    assert "learning rate 0.0002" in scheme
    assert "batch size 32" in scheme
    evaluation = card["evaluation"]
    # QAT learns its ranges over the whole training split.
    assert evaluation["calibration_images"] == SIZES.train
    assert card["export"]["calibration_crops"] == SIZES.train
    assert evaluation["accuracy_drop_points"] <= 1.5
    assert evaluation["int8_accuracy"] >= 0.6
    assert [entry["label"] for entry in evaluation["per_class"]] == card["labels"]
    markdown = qat_exported.with_suffix(".md").read_text()
    assert "- Quantization: qat (PT2E quantization-aware training" in markdown
    assert "fine-tuned with quantization-aware training" in markdown


@pytest.mark.slow
def test_qat_file_matches_simulated(qat_exported, fer_csv, tmp_path):
    card = json.loads(qat_exported.with_suffix(".json").read_text())
    evaluation = card["evaluation"]
    assert abs(evaluation["int8_accuracy"] - evaluation["int8_simulated_accuracy"]) <= SIMULATED_TOLERANCE
    scores_path = tmp_path / "scores.json"
    assert main(["evaluate", str(qat_exported), "--data", str(fer_csv), "--json", str(scores_path)]) == 0
    scores = json.loads(scores_path.read_text())
    assert round(scores["accuracy"], 4) == evaluation["int8_accuracy"]
    assert round(scores["macro_f1"], 4) == evaluation["int8_macro_f1"]


@pytest.mark.slow
def test_qat_graph_matches_file(trained, tmp_path):
    # The file is compared with the graph it came from image by image, a check that can fail
    # even where both are right on every test image.
    run = load_trained(trained / "checkpoints" / "last.ckpt")
    model = fold_input_scaling(run.module.model)
    train = run.datamodule.split("train")
    subset = ImageSet(train.images[:128], train.labels[:128])
    test_images = run.datamodule.split("test").images
    float_before = predict_float(model, test_images)
    settings = QuantizationSettings(method="qat", epochs=1, learning_rate=0.0002, batch_size=32)
    result = train_qat(model, subset, settings, class_balance="loss", seed=3)
    np.testing.assert_array_equal(predict_float(model, test_images), float_before)
    assert result.training_images == 128
    assert result.steps == 4
    assert math.isfinite(result.last_epoch_loss)

    path = tmp_path / "qat.tflite"
    write_quantized_tflite(result.graph, result.quantizer, model.input_size, path)
    verify_int8_only(path)
    simulated = predict_graph(result.graph, test_images)
    from_file = Int8ImageModel(path, model.input_size, model.num_classes, pixel_range=RAW_PIXEL_RANGE).predict(
        test_images
    )
    largest_per_image = np.abs(simulated - from_file).max(axis=1)
    assert np.mean(simulated.argmax(1) == from_file.argmax(1)) >= 0.95
    assert np.median(largest_per_image) <= PROBABILITY_STEP
    assert largest_per_image.max() <= 16 * PROBABILITY_STEP


@pytest.mark.slow
def test_export_float_from_checkpoint(trained, tmp_path, capsys):
    output = tmp_path / "float.tflite"
    assert main(["export-float", str(trained / "checkpoints" / "last.ckpt"), "--out", str(output)]) == 0
    interpreter = load_interpreter(output)
    assert np.dtype(interpreter.get_input_details()[0]["dtype"]) == np.float32
    assert np.dtype(interpreter.get_output_details()[0]["dtype"]) == np.float32
    run = load_trained(trained / "checkpoints" / "last.ckpt")
    images = run.datamodule.split("test").images
    expected = predict_float(run.module.model, images)
    actual = predict_float_tflite(output, images, run.module.model.pixel_range)
    assert float(np.abs(actual - expected).max()) < 1e-4
    assert "float32 input (1, 48, 48, 1)" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"method": "QAT"}, "quantization.method is 'QAT'"),
        ({"method": "qat", "epochs": 0}, "quantization.epochs is 0"),
        ({"method": "qat", "epochs": 1.5}, "quantization.epochs is 1.5"),
        ({"method": "qat", "epochs": True}, "quantization.epochs is True"),
        ({"method": "qat", "learning_rate": 0}, "quantization.learning_rate is 0"),
        ({"method": "qat", "learning_rate": 2.0}, "quantization.learning_rate is 2.0"),
        ({"method": "qat", "learning_rate": float("nan")}, "quantization.learning_rate is nan"),
        ({"method": "qat", "learning_rate": "fast"}, "quantization.learning_rate is 'fast'"),
        ({"method": "qat", "batch_size": 1}, "quantization.batch_size is 1"),
    ],
)
def test_settings_reject_bad_value(values, named):
    with pytest.raises(ConfigError) as error:
        QuantizationSettings(**values)
    assert named in str(error.value)


def test_settings_describe_method():
    assert method_of(QuantizationSettings().describe()) == "ptq"
    assert method_of(QuantizationSettings(method="qat").describe()) == "qat"
    # The default model's card predates the method prefix.
    assert method_of("PT2E static post-training quantization: int8 activations") is None


def test_load_settings_merges_files(tmp_path):
    first = write_yaml(tmp_path / "first.yaml", {"model": {"architecture": "ds_cnn"}, "quantization": {"method": "qat"}})
    # PyYAML reads 1e-4 without a decimal point as a string; the loader turns it into a number.
    second = tmp_path / "second.yaml"
    second.write_text("quantization:\n  epochs: 5\n  learning_rate: 1e-4\n")
    settings = load_settings([first, second], {"batch_size": 16, "epochs": None})
    assert settings == QuantizationSettings(method="qat", epochs=5, learning_rate=1e-4, batch_size=16)


def test_load_settings_unknown_key(tmp_path):
    config = write_yaml(tmp_path / "qat.yaml", {"quantization": {"method": "qat", "lr": 0.001}})
    with pytest.raises(ConfigError) as error:
        load_settings([config])
    assert "unknown key quantization.lr" in str(error.value)
    assert "learning_rate" in str(error.value)


def test_load_settings_needs_section(tmp_path):
    config = write_yaml(tmp_path / "fit.yaml", {"model": {"architecture": "ds_cnn"}})
    with pytest.raises(ConfigError, match="no 'quantization' section"):
        load_settings([config])
    with pytest.raises(ConfigError, match="config file not found"):
        load_settings([tmp_path / "absent.yaml"])


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--qat-learning-rate", "-1"], "quantization.learning_rate is -1.0 (set on the command line): use a number"),
        (["--qat-epochs", "0"], "quantization.epochs is 0"),
        (["--qat-batch-size", "1"], "quantization.batch_size is 1"),
        (["--calibration-images", "50"], "--calibration-images 50 applies to PTQ only"),
    ],
)
def test_export_rejects_bad_qat_flag(tmp_path, capsys, arguments, message):
    # The settings are checked before the checkpoint is read, so no checkpoint is needed.
    checkpoint = tmp_path / "absent.ckpt"
    output = tmp_path / "model.tflite"
    assert main(["export", str(checkpoint), "--out", str(output), "--quantization", "qat", *arguments]) == 1
    assert message in capsys.readouterr().err
    assert not output.exists()


def test_export_rejects_bad_yaml_value(tmp_path, capsys):
    config = write_yaml(tmp_path / "qat.yaml", {"quantization": {"method": "qat", "epochs": "three"}})
    arguments = ["export", str(tmp_path / "absent.ckpt"), "--out", str(tmp_path / "m.tflite"), "--config", str(config)]
    assert main(arguments) == 1
    message = capsys.readouterr().err
    assert f"quantization.epochs is 'three' (set in {config}): use a whole number" in message


def test_export_rejects_qat_flag_with_ptq(tmp_path, capsys):
    arguments = ["export", str(tmp_path / "absent.ckpt"), "--out", str(tmp_path / "m.tflite"), "--qat-epochs", "4"]
    assert main(arguments) == 1
    assert "--qat-epochs set QAT options, but the method is ptq" in capsys.readouterr().err


def test_export_rejects_qat_without_dataset(tmp_path, capsys):
    arguments = ["export", str(tmp_path / "weights.pt"), "--out", str(tmp_path / "m.tflite"), "--quantization", "qat"]
    assert main(arguments) == 1
    assert "QAT needs the labelled training split" in capsys.readouterr().err


def test_fit_rejects_bad_quantization(tmp_path, fer_csv, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = write_yaml(tmp_path / "bad.yaml", {"quantization": {"method": "qat", "batch_size": 1}})
    arguments = ["fit", "--config", str(config), "--data.path", str(fer_csv), "--trainer.fast_dev_run", "true"]
    assert main(arguments) == 1
    assert "quantization.batch_size is 1" in capsys.readouterr().err


def test_export_float_rejects_suffix(tmp_path, capsys):
    source = tmp_path / "weights.onnx"
    source.write_bytes(b"")
    assert main(["export-float", str(source), "--out", str(tmp_path / "float.tflite")]) == 1
    assert "has suffix '.onnx'" in capsys.readouterr().err
