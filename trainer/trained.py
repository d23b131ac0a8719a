"""Reload a ``trainer fit`` checkpoint with the data module it was trained on."""

from __future__ import annotations

import inspect
import logging
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch

from trainer.datamodule import FerDataModule
from trainer.errors import WeightsError
from trainer.module import EmotionModule

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainedRun:
    """A trained module in eval mode on the CPU and its set-up data module."""

    module: EmotionModule
    datamodule: FerDataModule


def load_trained(checkpoint: Path, data_path: Path | None = None) -> TrainedRun:
    """Load the module and rebuild its data module from the hyperparameters saved in the checkpoint.

    ``data_path`` replaces the dataset path of the run, for a checkpoint moved to another machine.
    The image size always follows the model's input size.

    Raises:
        WeightsError: the file is missing or is not a checkpoint of ``trainer fit``.
    """
    checkpoint = Path(checkpoint)
    payload = _read_checkpoint(checkpoint)
    data_hparams = payload.get("datamodule_hyper_parameters")
    if not data_hparams:
        raise WeightsError(
            f"{checkpoint} has no data module hyperparameters: pass a .ckpt written by 'trainer fit'"
        )
    module = _load_module(checkpoint, payload)
    # LightningCLI adds private keys such as ``_instantiator``; keep only the constructor's arguments.
    accepted = inspect.signature(FerDataModule.__init__).parameters
    data_hparams = {key: value for key, value in data_hparams.items() if key in accepted and key != "self"}
    if data_path is not None:
        data_hparams["path"] = str(data_path)
    data_hparams["image_size"] = module.hparams.input_size
    datamodule = FerDataModule(**data_hparams)
    datamodule.setup("test")
    return TrainedRun(module, datamodule)


def load_trained_module(checkpoint: Path) -> EmotionModule:
    """Load the ``EmotionModule`` of a ``trainer fit`` checkpoint in eval mode on the CPU, without its data.

    Raises:
        WeightsError: the file is missing or is not a checkpoint of ``trainer fit``.
    """
    checkpoint = Path(checkpoint)
    return _load_module(checkpoint, _read_checkpoint(checkpoint))


def _load_module(checkpoint: Path, payload: dict) -> EmotionModule:
    if "hyper_parameters" not in payload:
        raise WeightsError(f"{checkpoint} has no module hyperparameters: pass a .ckpt written by 'trainer fit'")
    # The fine-tuning source is already in the trained weights, and may not exist on this machine.
    module = EmotionModule.load_from_checkpoint(checkpoint, map_location="cpu", init_weights=None)
    module.eval()
    log.info("Loaded %s (%s, %d parameters)", checkpoint, module.hparams.architecture, module.parameter_count)
    return module


def _read_checkpoint(checkpoint: Path) -> dict:
    if not checkpoint.is_file():
        raise WeightsError(f"Checkpoint not found: {checkpoint}")
    # Lightning checkpoints pickle their hyperparameters, so they load with weights_only=False:
    # load only checkpoints you trained yourself.
    try:
        payload = torch.load(checkpoint, map_location="cpu", weights_only=False)
    except (OSError, EOFError, RuntimeError, ValueError, IndexError, KeyError, pickle.UnpicklingError) as error:
        raise WeightsError(
            f"Cannot read checkpoint {checkpoint} ({type(error).__name__}: {error}): it is damaged or not a "
            "checkpoint; pass a .ckpt written by 'trainer fit', such as RUN/checkpoints/last.ckpt"
        ) from None
    if not isinstance(payload, dict):
        raise WeightsError(f"{checkpoint} is not a Lightning checkpoint: pass a .ckpt written by 'trainer fit'")
    return payload
