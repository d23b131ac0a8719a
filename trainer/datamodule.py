"""Lightning data module over ``trainer.data``: splits, class balance and data loaders.

Batches are ``(images, labels)`` with images uint8 (N, 1, S, S) at the model's input size;
``EmotionModule`` converts, augments and normalizes them on the device.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset, WeightedRandomSampler

from trainer.data import Dataset, ImageSet, class_weights, load_dataset

log = logging.getLogger(__name__)


class FerDataModule(pl.LightningDataModule):
    """FER2013 from ``fer2013.csv`` or an image folder, with optional FER+ labels.

    Args:
        path: ``fer2013.csv`` or a folder with ``train/<class>/`` and ``test/<class>/``.
        ferplus_path: ``fer2013new.csv`` with FER+ votes; replaces the CSV's labels.
        image_size: side in pixels the images are resized to; must equal the model's input size.
        batch_size: images per batch (per device under DDP).
        num_workers: DataLoader worker processes.
        val_fraction: share of each class of ``train/`` held out for validation (image folders).
        seed: seed of the validation split and of the balanced sampler.
        max_malformed_share: largest share of malformed rows accepted before the run stops.
        class_balance: ``loss`` weights the loss by inverse class frequency, ``sampler`` draws
            training images with inverse-frequency probabilities, ``none`` does neither.
    """

    def __init__(
        self,
        path: str,
        ferplus_path: str | None = None,
        image_size: int = 48,
        batch_size: int = 64,
        num_workers: int = 0,
        val_fraction: float = 0.1,
        seed: int = 0,
        max_malformed_share: float = 0.01,
        class_balance: Literal["loss", "sampler", "none"] = "loss",
    ) -> None:
        super().__init__()
        # Stored in Lightning checkpoints, so ``trainer export`` can rebuild the data of a run.
        self.save_hyperparameters()
        self.dataset: Dataset | None = None
        self._sets: dict[str, ImageSet] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.dataset is not None:
            return
        hparams = self.hparams
        self.dataset = load_dataset(
            Path(hparams.path),
            ferplus_path=Path(hparams.ferplus_path) if hparams.ferplus_path else None,
            val_fraction=hparams.val_fraction,
            seed=hparams.seed,
            max_malformed_share=hparams.max_malformed_share,
        )
        self._sets = {
            name: self.dataset.split(name).resized(hparams.image_size) for name in ("train", "val", "test")
        }
        counts = self._sets["train"].class_counts(len(self.labels))
        log.info("Training images per class: %s", dict(zip(self.labels, counts.tolist(), strict=True)))

    @property
    def labels(self) -> tuple[str, ...]:
        if self.dataset is None:
            raise RuntimeError("call setup() before reading labels")
        return self.dataset.labels

    def split(self, name: str) -> ImageSet:
        """Return a split at the model's input size; ``setup`` must have run."""
        if not self._sets:
            raise RuntimeError("call setup() before reading a split")
        return self._sets[name]

    def loss_weights(self) -> torch.Tensor | None:
        """Return the per-class loss weights when ``class_balance`` is ``loss``, else None."""
        if self.hparams.class_balance != "loss":
            return None
        return torch.from_numpy(class_weights(self.split("train").labels, len(self.labels)))

    def train_dataloader(self) -> DataLoader:
        train = self.split("train")
        sampler = None
        if self.hparams.class_balance == "sampler":
            per_class = class_weights(train.labels, len(self.labels))
            sampler = WeightedRandomSampler(
                torch.from_numpy(per_class[train.labels].astype(np.float64)),
                num_samples=len(train),
                replacement=True,
                generator=torch.Generator().manual_seed(self.hparams.seed),
            )
        return DataLoader(
            _tensor_dataset(train),
            batch_size=self.hparams.batch_size,
            shuffle=sampler is None,
            sampler=sampler,
            num_workers=self.hparams.num_workers,
            drop_last=len(train) > self.hparams.batch_size,
        )

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def _eval_loader(self, name: str) -> DataLoader:
        return DataLoader(
            _tensor_dataset(self.split(name)),
            batch_size=self.hparams.batch_size,
            num_workers=self.hparams.num_workers,
        )


def _tensor_dataset(images: ImageSet) -> TensorDataset:
    return TensorDataset(torch.from_numpy(images.images).unsqueeze(1), torch.from_numpy(images.labels))
