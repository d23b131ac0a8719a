"""Lightning callbacks of a training run: confusion-matrix images, int8 size and W&B artifacts.

Every callback writes its files into the run's log folder (the CSV logger's), so a run
without W&B keeps the same record; with a ``WandbLogger`` the images and artifacts also
go to W&B (offline runs sync them later with ``wandb sync``).
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import cv2
import lightning.pytorch as pl
import numpy as np
from lightning.pytorch.loggers import WandbLogger

from trainer.module import EmotionModule

log = logging.getLogger(__name__)

CELL_PX = 56
LABEL_MARGIN_PX = 90


def render_confusion_matrix(matrix: np.ndarray, labels: tuple[str, ...], title: str) -> np.ndarray:
    """Draw a confusion matrix (rows: true labels, columns: predictions) as an RGB uint8 image.

    Cell shade is the share of its row, so rare classes are as readable as common ones;
    each cell also prints its count.
    """
    classes = len(labels)
    side = LABEL_MARGIN_PX + classes * CELL_PX
    image = np.full((side + 30, side + 10, 3), 255, dtype=np.uint8)
    totals = np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    shares = matrix / totals
    font = cv2.FONT_HERSHEY_SIMPLEX
    cv2.putText(image, title, (5, 18), font, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    top = 30 + LABEL_MARGIN_PX
    for row in range(classes):
        cv2.putText(image, labels[row][:10], (4, top + row * CELL_PX + CELL_PX // 2 + 4), font, 0.4, (0, 0, 0), 1)
        for column in range(classes):
            x0, y0 = LABEL_MARGIN_PX + column * CELL_PX, top + row * CELL_PX
            shade = int(255 - 200 * shares[row, column])
            cv2.rectangle(image, (x0, y0), (x0 + CELL_PX - 1, y0 + CELL_PX - 1), (shade, shade, 255), -1)
            color = (255, 255, 255) if shade < 130 else (0, 0, 0)
            text = str(int(matrix[row, column]))
            cv2.putText(image, text, (x0 + 6, y0 + CELL_PX // 2 + 4), font, 0.4, color, 1, cv2.LINE_AA)
    for column in range(classes):
        x = LABEL_MARGIN_PX + column * CELL_PX + 4
        cv2.putText(image, labels[column][:8], (x, 30 + LABEL_MARGIN_PX - 8), font, 0.35, (0, 0, 0), 1)
    return image


def run_directory(trainer: pl.Trainer) -> Path:
    """Return the folder of this run's logs: the first logger's ``log_dir``, else the root dir."""
    for logger in trainer.loggers:
        log_dir = getattr(logger, "log_dir", None)
        if log_dir:
            return Path(log_dir)
    return Path(trainer.default_root_dir)


def _wandb_loggers(trainer: pl.Trainer) -> list[WandbLogger]:
    return [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]


class ConfusionMatrixImage(pl.Callback):
    """Save the confusion matrix of every validation epoch and of the test run as a PNG and to W&B."""

    def on_validation_end(self, trainer: pl.Trainer, pl_module: EmotionModule) -> None:
        if trainer.sanity_checking:
            return
        self._record(trainer, pl_module, "val", f"epoch{trainer.current_epoch:03d}")

    def on_test_end(self, trainer: pl.Trainer, pl_module: EmotionModule) -> None:
        self._record(trainer, pl_module, "test", "final")

    def _record(self, trainer: pl.Trainer, pl_module: EmotionModule, split: str, tag: str) -> None:
        matrix = pl_module.confusion.get(split)
        if matrix is None or not trainer.is_global_zero:
            return
        image = render_confusion_matrix(matrix.numpy(), pl_module.labels, f"{split} confusion matrix, {tag}")
        folder = run_directory(trainer) / "confusion"
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / f"{split}_{tag}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        for logger in _wandb_loggers(trainer):
            logger.log_image(key=f"{split}/confusion_matrix", images=[image], caption=[tag])


class RunRecord(pl.Callback):
    """Write ``run.json`` (parameters, int8 file size, data report) and log dataset and model artifacts.

    At the end of fit, the module's model is quantized on ``calibration_images`` training
    images and converted to int8 TFLite in a temporary folder, to report the int8 file size
    of every run. The size depends on the architecture, not on the weights' values. Set
    ``int8_size`` to false to skip the conversion (about 15 s on a 2-core x86 CPU).
    """

    def __init__(self, int8_size: bool = True, calibration_images: int = 32) -> None:
        self.int8_size = int8_size
        self.calibration_images = calibration_images

    def on_fit_start(self, trainer: pl.Trainer, pl_module: EmotionModule) -> None:
        if not trainer.is_global_zero:
            return
        datamodule = trainer.datamodule
        record = {"parameters": pl_module.parameter_count, "architecture": pl_module.hparams.architecture}
        if datamodule is not None and datamodule.dataset is not None:
            report = datamodule.dataset.report
            record["data"] = {
                "source": report.source,
                "rows_read": report.rows_read,
                "kept": dict(report.kept),
                "malformed": len(report.malformed),
                "dropped": dict(report.dropped),
            }
        self._write(trainer, record)
        for logger in _wandb_loggers(trainer):
            logger.experiment.summary["model/parameters"] = pl_module.parameter_count
            if datamodule is not None:
                logger.experiment.log_artifact(_dataset_artifact(datamodule.hparams.path))

    def on_fit_end(self, trainer: pl.Trainer, pl_module: EmotionModule) -> None:
        if not trainer.is_global_zero:
            return
        record = self._read(trainer)
        if self.int8_size and trainer.datamodule is not None:
            record["int8_size_bytes"] = self._measure_int8_size(trainer, pl_module)
            log.info("int8 TFLite size of %s: %d bytes", pl_module.hparams.architecture, record["int8_size_bytes"])
        checkpoint = getattr(trainer.checkpoint_callback, "best_model_path", "") or ""
        record["best_checkpoint"] = checkpoint
        self._write(trainer, record)
        for logger in _wandb_loggers(trainer):
            if "int8_size_bytes" in record:
                logger.experiment.summary["model/int8_size_bytes"] = record["int8_size_bytes"]
            if checkpoint:
                logger.experiment.log_artifact(_model_artifact(Path(checkpoint), record))

    def _measure_int8_size(self, trainer: pl.Trainer, pl_module: EmotionModule) -> int:
        import copy

        from trainer.export import convert_to_int8_tflite
        from trainer.models import RAW_PIXEL_RANGE, fold_input_scaling

        model = copy.deepcopy(pl_module.model).cpu().eval()
        if model.pixel_range != RAW_PIXEL_RANGE:
            model = fold_input_scaling(model)
        images = trainer.datamodule.split("train").images[: self.calibration_images]
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "probe.tflite"
            convert_to_int8_tflite(model, images, path)
            return path.stat().st_size

    @staticmethod
    def _write(trainer: pl.Trainer, record: dict) -> None:
        path = run_directory(trainer) / "run.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")

    @staticmethod
    def _read(trainer: pl.Trainer) -> dict:
        path = run_directory(trainer) / "run.json"
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _dataset_artifact(data_path: str):
    import wandb

    artifact = wandb.Artifact("fer-dataset", type="dataset")
    # A reference records the files' checksums without copying FER2013 (about 300 MB) into W&B.
    artifact.add_reference(Path(data_path).resolve().as_uri())
    return artifact


def _model_artifact(checkpoint: Path, record: dict):
    import wandb

    artifact = wandb.Artifact("emotion-model", type="model", metadata=record)
    artifact.add_file(str(checkpoint))
    return artifact

