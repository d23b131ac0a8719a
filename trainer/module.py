"""Lightning module that trains an emotion classifier: loss, augmentation, metrics and optimizer.

Metrics per split (``train``, ``val``, ``test``) come from torchmetrics: accuracy,
macro-F1, and recall and F1 per class, logged as ``<split>/acc``, ``<split>/macro_f1``,
``<split>/recall/<label>`` and ``<split>/f1/<label>``. The confusion matrix of each
validation epoch and of the test run is kept in ``confusion`` for the callbacks that
render it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import kornia.augmentation as K
import lightning.pytorch as pl
import torch
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassRecall,
)

from edge_agent.payload import FER2013_LABELS
from trainer.errors import WeightsError
from trainer.models import ARCHITECTURES, build_model, count_parameters

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


class EmotionModule(pl.LightningModule):
    """A ``MiniXception`` or ``DSCNN`` with its training loop.

    Args:
        architecture: ``mini_xception`` (56,951 parameters at 7 classes) or ``ds_cnn`` (36,487).
        input_size: side of the square gray input in pixels; the data module resizes to it.
        labels: class names in output order.
        width: channel multiplier of ``ds_cnn``.
        init_weights: Keras mini-Xception HDF5 or trainer checkpoint (.pt) to fine-tune from.
        learning_rate: AdamW learning rate, decayed to 0 along a cosine over ``max_epochs``.
        weight_decay: AdamW weight decay.
        augment: apply the random augmentations below to training batches.
        crop_padding_px: random crop after padding each side by this many pixels (replicated edge).
        flip: random horizontal flip with probability 0.5.
        rotation_deg: random rotation up to this angle either way.
        brightness: random brightness change up to this fraction of the pixel range.
        contrast: random contrast factor in [1 - contrast, 1 + contrast].
    """

    def __init__(
        self,
        architecture: Literal["mini_xception", "ds_cnn"] = "ds_cnn",
        input_size: int = 48,
        labels: list[str] = list(FER2013_LABELS),
        width: float = 1.0,
        init_weights: str | None = None,
        learning_rate: float = 3e-3,
        weight_decay: float = 1e-4,
        augment: bool = True,
        crop_padding_px: int = 4,
        flip: bool = True,
        rotation_deg: float = 10.0,
        brightness: float = 0.2,
        contrast: float = 0.2,
    ) -> None:
        super().__init__()
        if architecture not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {architecture!r}: use one of {', '.join(ARCHITECTURES)}")
        self.save_hyperparameters()
        self.labels = tuple(labels)
        self.model = build_model(architecture, input_size, len(self.labels), width)
        if init_weights:
            load_initial_weights(self.model, Path(init_weights))
        self.augmentation = _augmentation(crop_padding_px, flip, rotation_deg, brightness, contrast, input_size)
        # Class weights of the loss come from the data in setup(). Not persistent, so checkpoints of
        # runs with and without class weighting load into the same module.
        self.register_buffer("class_weights", None, persistent=False)
        # ModuleDict keys may not be ``train`` (an nn.Module method), hence the ``_metrics`` suffix.
        self.metrics = nn.ModuleDict({f"{split}_metrics": _metrics(len(self.labels)) for split in SPLITS})
        #: Last computed confusion matrix per split, (classes, classes) counts, rows are true labels.
        self.confusion: dict[str, torch.Tensor] = {}

    @property
    def parameter_count(self) -> int:
        return count_parameters(self.model)

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        weights = datamodule.loss_weights() if datamodule is not None else None
        if datamodule is not None and tuple(datamodule.labels) != self.labels:
            raise ValueError(f"the data has labels {datamodule.labels}, the model {self.labels}")
        if weights is not None:
            log.info("Class weights of the loss: %s", [round(float(value), 3) for value in weights])
        self.class_weights = weights.to(self.device) if weights is not None else None

    def on_fit_start(self) -> None:
        for logger in self.loggers:
            logger.log_hyperparams({"model/parameters": self.parameter_count})

    def to_model_input(self, images: torch.Tensor, train: bool) -> torch.Tensor:
        """Turn uint8 (N, 1, S, S) images into float model input in the model's pixel range."""
        x = images.float() / 255.0
        if train and self.hparams.augment:
            x = self.augmentation(x).clamp(0.0, 1.0)
        low, high = self.model.pixel_range
        return low + x * (high - low)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_index: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_index: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_index: int) -> None:
        self._step(batch, "test")

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], split: str) -> torch.Tensor:
        images, labels = batch
        logits = self.model.logits(self.to_model_input(images, train=split == "train"))
        loss = nn.functional.cross_entropy(logits, labels, weight=self.class_weights)
        self.metrics[f"{split}_metrics"].update(logits, labels)
        self.log(f"{split}/loss", loss, on_step=False, on_epoch=True, batch_size=len(labels), sync_dist=True)
        return loss

    def on_train_epoch_end(self) -> None:
        self._log_metrics("train")

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")

    def _log_metrics(self, split: str) -> None:
        values = self.metrics[f"{split}_metrics"].compute()
        self.metrics[f"{split}_metrics"].reset()
        self.log(f"{split}/acc", values["acc"])
        self.log(f"{split}/macro_f1", values["macro_f1"])
        for index, label in enumerate(self.labels):
            self.log(f"{split}/recall/{label}", values["recall"][index])
            self.log(f"{split}/f1/{label}", values["f1"][index])
        self.confusion[split] = values["confusion"].detach().cpu()

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(
            self.parameters(), lr=self.hparams.learning_rate, weight_decay=self.hparams.weight_decay
        )
        max_epochs = max(1, self.trainer.max_epochs or 1)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max_epochs)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}


def _metrics(num_classes: int) -> MetricCollection:
    return MetricCollection(
        {
            "acc": MulticlassAccuracy(num_classes, average="micro"),
            "macro_f1": MulticlassF1Score(num_classes, average="macro"),
            "recall": MulticlassRecall(num_classes, average="none"),
            "f1": MulticlassF1Score(num_classes, average="none"),
            "confusion": MulticlassConfusionMatrix(num_classes),
        },
        compute_groups=False,
    )


def _augmentation(
    crop_padding_px: int, flip: bool, rotation_deg: float, brightness: float, contrast: float, size_px: int
) -> nn.Module:
    """Random crop, flip, rotation, brightness and contrast on float images in [0, 1], per sample."""
    steps: list[nn.Module] = []
    if crop_padding_px > 0:
        steps.append(K.RandomCrop((size_px, size_px), padding=crop_padding_px, padding_mode="replicate"))
    if flip:
        steps.append(K.RandomHorizontalFlip())
    if rotation_deg > 0:
        steps.append(K.RandomAffine(degrees=rotation_deg, padding_mode="border", p=1.0))
    if brightness > 0:
        steps.append(K.RandomBrightness(brightness=(1 - brightness, 1 + brightness), p=1.0))
    if contrast > 0:
        steps.append(K.RandomContrast(contrast=(1 - contrast, 1 + contrast), p=1.0))
    return nn.Sequential(*steps)


def load_initial_weights(model: nn.Module, path: Path) -> None:
    """Copy the weights of a Keras mini-Xception (.hdf5/.h5) or trainer checkpoint (.pt) into ``model``.

    Raises:
        WeightsError: the file is missing or unreadable, or its tensors do not fit ``model``.
    """
    from trainer.checkpoint import load_checkpoint
    from trainer.keras_import import load_keras_mini_xception

    if path.suffix.lower() in (".hdf5", ".h5"):
        source = load_keras_mini_xception(path)
    else:
        source = load_checkpoint(path).model
    if source.pixel_range != model.pixel_range:
        raise WeightsError(
            f"{path}: the weights take pixels in {source.pixel_range}, the model {model.pixel_range}; "
            "fine-tune from weights that were not folded for export"
        )
    try:
        # The pooling layout depends on the input size, but no tensor shape does, so weights of a
        # 64x64 model load into a 48x48 one.
        model.load_state_dict(source.state_dict())
    except RuntimeError as error:
        raise WeightsError(f"{path}: the weights do not fit {type(model).__name__}: {error}") from None
    log.info("Initialized %s from %s", type(model).__name__, path)
