"""Checkpoint files: a ``MiniXception`` state dict with what is needed to rebuild and export it.

A checkpoint is a ``torch.save`` of a plain dict: ``state_dict`` plus the architecture
arguments, labels, input pixel range and provenance. Only tensors, strings, numbers and
lists are stored, so ``torch.load(weights_only=True)`` can read it.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import torch

from edge_agent.model_card import Provenance
from trainer.errors import WeightsError
from trainer.models import NORMALIZED_PIXEL_RANGE, RAW_PIXEL_RANGE, MiniXception

CHECKPOINT_FORMAT = 1
ARCHITECTURE = "mini_xception"


@dataclass(frozen=True)
class Checkpoint:
    """A model with its labels and the origin of its weights."""

    model: MiniXception
    labels: tuple[str, ...]
    provenance: Provenance


def save_checkpoint(path: Path, checkpoint: Checkpoint) -> None:
    """Write the checkpoint to ``path``, creating its folder."""
    model = checkpoint.model
    if len(checkpoint.labels) != model.num_classes:
        raise WeightsError(f"{len(checkpoint.labels)} labels for a model with {model.num_classes} classes")
    payload = {
        "format": CHECKPOINT_FORMAT,
        "architecture": ARCHITECTURE,
        "input_size": model.input_size,
        "num_classes": model.num_classes,
        "pixel_range": list(model.pixel_range),
        "labels": list(checkpoint.labels),
        "provenance": checkpoint.provenance.model_dump(),
        "state_dict": model.state_dict(),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, path)


def load_checkpoint(path: Path) -> Checkpoint:
    """Rebuild the model of a checkpoint written by ``save_checkpoint``.

    Raises:
        WeightsError: the file is missing, not a checkpoint of this format, or its weights
            do not fit the architecture it names.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"Checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, EOFError, RuntimeError, ValueError, IndexError, KeyError, pickle.UnpicklingError) as error:
        # torch's own message for a non-checkpoint suggests weights_only=False, which would run
        # arbitrary pickled code, so only the error type is passed on.
        raise WeightsError(
            f"Cannot read checkpoint {path}: it is damaged or not a torch.save file of tensors and plain "
            f"values ({type(error).__name__}). Write checkpoints with 'trainer import-keras' or save_checkpoint"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise WeightsError(
            f"{path} is not a trainer checkpoint of format {CHECKPOINT_FORMAT}: write it with "
            "'trainer import-keras' or trainer.checkpoint.save_checkpoint"
        )
    if payload.get("architecture") != ARCHITECTURE:
        raise WeightsError(f"{path}: architecture {payload.get('architecture')!r} is not {ARCHITECTURE!r}")

    model = MiniXception(input_size=int(payload["input_size"]), num_classes=int(payload["num_classes"]))
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as error:
        raise WeightsError(f"{path}: the weights do not fit MiniXception: {error}") from None
    pixel_range = tuple(float(value) for value in payload["pixel_range"])
    if pixel_range not in (NORMALIZED_PIXEL_RANGE, RAW_PIXEL_RANGE):
        raise WeightsError(f"{path}: unsupported pixel_range {list(pixel_range)}")
    model.pixel_range = pixel_range
    model.eval()
    try:
        provenance = Provenance.model_validate(payload["provenance"])
    except ValueError as error:
        raise WeightsError(f"{path}: invalid provenance: {error}") from None
    return Checkpoint(model=model, labels=tuple(payload["labels"]), provenance=provenance)
