"""Quantization settings of an export: PTQ or QAT, from YAML files and flags.

``QuantizationSettings`` chooses between the two ways ``trainer export`` makes a fully int8
file from a ``trainer fit`` checkpoint:

- ``ptq``: post-training quantization. The float model runs on training images drawn at
  random, observers record each activation's range, and the weights stay as trained.
- ``qat``: quantization-aware training (``trainer.qat``). The model is fine-tuned with
  fake int8 quantization on the whole training split before it is converted.

The settings come from the ``quantization`` section of a YAML file (``--config``) and
from ``trainer export`` flags, which override the file. This module needs no torch, so
``trainer fit`` and the card renderer import it cheaply.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

import yaml

from trainer.errors import ConfigError

METHODS = ("ptq", "qat")
#: Key of the settings in a YAML file, and the prefix of their names in error messages.
SECTION = "quantization"
DEFAULT_QAT_EPOCHS = 3
#: A thirtieth and a fifth of the learning rates of the training configs (0.003 for ds_cnn,
#: 0.0005 for the mini-Xception fine-tune): QAT starts from trained weights and only adapts them
#: to int8 rounding.
DEFAULT_QAT_LEARNING_RATE = 1e-4
DEFAULT_QAT_BATCH_SIZE = 64

_COMMON_SCHEME = (
    "int8 weights (per-channel symmetric), int32 biases; input scale 1 and zero point -128 "
    "(int8 = gray pixel - 128); softmax output scale 1/256, zero point -128"
)


@dataclass(frozen=True)
class QuantizationSettings:
    """Quantization method of an export: ``ptq``, or ``qat`` with its epochs, learning rate and batch size.

    ``epochs``, ``learning_rate`` and ``batch_size`` apply to ``qat`` only. QAT uses Adam
    without weight decay, with the learning rate decayed to 0 along a cosine over all steps.

    Raises:
        ConfigError: a value is of the wrong type or out of range; the message names it.
    """

    method: Literal["ptq", "qat"] = "ptq"
    epochs: int = DEFAULT_QAT_EPOCHS
    learning_rate: float = DEFAULT_QAT_LEARNING_RATE
    batch_size: int = DEFAULT_QAT_BATCH_SIZE

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(
                f"{SECTION}.method is {self.method!r}: use 'ptq' (post-training quantization) or 'qat' "
                "(quantization-aware training)",
                key="method",
            )
        if not _is_int(self.epochs) or self.epochs < 1:
            raise ConfigError(
                f"{SECTION}.epochs is {self.epochs!r}: use a whole number of QAT epochs, at least 1", key="epochs"
            )
        if (
            not isinstance(self.learning_rate, (int, float))
            or isinstance(self.learning_rate, bool)
            or not math.isfinite(self.learning_rate)
            or not 0 < self.learning_rate <= 1
        ):
            raise ConfigError(
                f"{SECTION}.learning_rate is {self.learning_rate!r}: use a number above 0 and at most 1, "
                f"such as {DEFAULT_QAT_LEARNING_RATE}",
                key="learning_rate",
            )
        if not _is_int(self.batch_size) or self.batch_size < 2:
            raise ConfigError(
                f"{SECTION}.batch_size is {self.batch_size!r}: use a whole number of at least 2, because batch "
                "norm in training mode needs statistics over more than one image",
                key="batch_size",
            )

    def describe(self) -> str:
        """Return the scheme in words for the model card, starting with the method's name."""
        if self.method == "ptq":
            return (
                "ptq (PT2E static post-training quantization): int8 activations (per-tensor affine, "
                f"histogram observer), {_COMMON_SCHEME}"
            )
        return (
            f"qat (PT2E quantization-aware training: {self.epochs} epochs on the training split, Adam, "
            f"learning rate {self.learning_rate:g} with cosine decay, batch size {self.batch_size}): int8 "
            f"activations (per-tensor affine, moving-average min/max), {_COMMON_SCHEME}"
        )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def method_of(scheme: str) -> str | None:
    """Return ``ptq`` or ``qat`` from a card's quantization text written by ``describe``, else None."""
    first_word = scheme.split(" ", 1)[0]
    return first_word if first_word in METHODS else None


def load_settings(
    config_paths: Sequence[Path], overrides: Mapping[str, Any] | None = None
) -> QuantizationSettings:
    """Merge the ``quantization`` sections of YAML files, in order, then ``overrides`` (None values skipped).

    A file may contain other sections, such as a ``trainer fit`` config, and they are ignored,
    but at least one of the files must have a ``quantization`` section.

    Raises:
        ConfigError: a file is missing, not YAML, or has an unknown key or invalid value.
    """
    values: dict[str, Any] = {}
    # Where each value came from, for the error message.
    sources: dict[str, str] = {}
    found_section = False
    for path in config_paths:
        section = _read_section(Path(path))
        if section is None:
            continue
        found_section = True
        values.update(section)
        sources.update(dict.fromkeys(section, f"in {path}"))
    if config_paths and not found_section:
        names = ", ".join(str(path) for path in config_paths)
        raise ConfigError(
            f"no '{SECTION}' section in {names}: add one, for example '{SECTION}: {{method: qat, epochs: 3}}', "
            "or drop --config"
        )
    for key, value in (overrides or {}).items():
        if value is not None:
            values[key] = value
            sources[key] = "on the command line"
    if "learning_rate" in values:
        values["learning_rate"] = _number(values["learning_rate"])
    try:
        return QuantizationSettings(**values)
    except ConfigError as error:
        if error.key not in sources:
            raise
        # Name the source right after the value: "quantization.epochs is 0 (set in qat.yaml): use ...".
        message = str(error)
        subject = f"{SECTION}.{error.key} is {values[error.key]!r}"
        origin = f" (set {sources[error.key]})"
        if message.startswith(subject):
            message = subject + origin + message[len(subject) :]
        else:
            message += origin
        raise ConfigError(message, key=error.key) from None


def _read_section(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise ConfigError(f"cannot read config file {path}: {error}") from None
    if document is None:
        return None
    if not isinstance(document, dict):
        raise ConfigError(f"{path} is not a YAML mapping of sections: write '{SECTION}:' at the top level")
    if SECTION not in document:
        return None
    section = document[SECTION]
    if not isinstance(section, dict):
        raise ConfigError(
            f"{path}: '{SECTION}' is {section!r}, expected a mapping such as "
            f"'{SECTION}: {{method: qat, epochs: 3}}'"
        )
    known = [field.name for field in fields(QuantizationSettings)]
    for key in section:
        if key not in known:
            raise ConfigError(f"{path}: unknown key {SECTION}.{key}: use {', '.join(known)}")
    return dict(section)


def _number(value: Any) -> Any:
    """Turn a numeric string into a float: PyYAML reads ``1e-4`` (no decimal point) as a string."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value
