"""Machine-readable model card: the JSON file beside an emotion model (``<model>.json``).

The card is the contract between the trainer, which writes it when it exports a model,
and the classifier, which reads labels, input size and preprocessing from it. It also
records where the weights came from, how the file was exported and how closely the
int8 file agrees with the float model it was made from.

``load_model_card`` validates the card and checks that it describes the model file byte
for byte (sha256), so a model and a card from different exports are never paired.

Versioning: ``card_schema_version`` is 1. A change that removes or renames a field, or
changes its meaning, increments it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edge_agent.errors import ModelError
from edge_agent.payload import LABEL_PATTERN

CARD_SCHEMA_VERSION = 1
CARD_SUFFIX = ".json"


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputSpec(_Record):
    """Image the model takes and how a face crop is turned into it."""

    height: int = Field(ge=8, le=1024, description="Input height in pixels.")
    width: int = Field(ge=8, le=1024, description="Input width in pixels.")
    channels: Literal[1] = 1
    color: Literal["gray"] = "gray"
    layout: Literal["NHWC"] = Field(default="NHWC", description="Axis order of the input tensor.")
    pixel_range: tuple[float, float] = Field(
        description=(
            "Range of the float values the model's first layer expects; [0, 255] means raw gray pixels."
        )
    )
    crop_margin: float = Field(
        ge=0, le=2, description="Fraction of max(box width, height) added around the face, see crop_faces."
    )
    resize_interpolation: Literal["area", "linear", "cubic", "nearest"] = Field(
        description="OpenCV interpolation used to resize the square crop to the input size."
    )

    @model_validator(mode="after")
    def _check_range(self) -> InputSpec:
        low, high = self.pixel_range
        if not low < high:
            raise ValueError(f"pixel_range must be [low, high] with low < high, got {list(self.pixel_range)}")
        return self


class TensorSpec(_Record):
    """Data type and affine quantization (real = scale * (q - zero_point)) of a tensor."""

    dtype: Literal["int8"]
    scale: float = Field(gt=0)
    zero_point: int = Field(ge=-128, le=127)


class OutputSpec(_Record):
    """Output tensor: one value per label, in label order."""

    kind: Literal["probabilities"] = "probabilities"
    tensor: TensorSpec


class Provenance(_Record):
    """Origin of the weights."""

    architecture: str = Field(min_length=1)
    source_weights: str = Field(min_length=1, description="File name of the weights the model was made from.")
    source_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    origin: str = Field(min_length=1, description="Package or project the weights come from, with version.")
    origin_license: str = Field(min_length=1)
    paper: str = Field(min_length=1)
    training_data: str = Field(min_length=1)
    reported_metrics: str | None = Field(
        default=None, description="Accuracy the origin reports, with its source."
    )


class ExportSettings(_Record):
    """Tools and settings that produced the .tflite file."""

    exporter: str = Field(min_length=1, description="Converter and version, e.g. 'litert-torch 0.10.0'.")
    torch_version: str = Field(min_length=1)
    torchao_version: str = Field(min_length=1)
    quantization: str = Field(min_length=1, description="Quantization scheme, in words.")
    method: Literal["ptq", "qat"] | None = Field(
        default=None, description="ptq (post-training) or qat (quantization-aware training); absent in older cards."
    )
    qat_epochs: int | None = Field(default=None, ge=1, description="QAT fine-tuning epochs.")
    qat_learning_rate: float | None = Field(default=None, gt=0, description="QAT starting learning rate.")
    calibration_crops: int = Field(ge=1, description="Face crops the activation ranges were calibrated on.")
    calibration_set: str = Field(min_length=1, description="Which crops were used for calibration.")
    seed: int
    command: str = Field(min_length=1, description="Trainer command that rebuilds the file.")


class Agreement(_Record):
    """How often two models give the same top label, and how far their probabilities differ."""

    candidate: str = Field(min_length=1)
    reference: str = Field(min_length=1)
    crop_set: str = Field(min_length=1, description="Which crops were compared.")
    crops: int = Field(ge=1)
    argmax_agreement: float = Field(ge=0, le=1, description="Fraction of crops with the same top label.")
    max_abs_probability_diff: float = Field(ge=0, le=1)
    mean_abs_probability_diff: float = Field(ge=0, le=1)


class ClassMetrics(_Record):
    """Recall and F1 of one class on the evaluation split."""

    label: str = Field(min_length=1)
    images: int = Field(ge=0, description="Images of this class in the evaluation split.")
    float_recall: float = Field(ge=0, le=1)
    int8_recall: float = Field(ge=0, le=1)
    int8_f1: float = Field(ge=0, le=1)


class Evaluation(_Record):
    """Accuracy of the float model and of the int8 file on a labelled test split, written by the trainer."""

    dataset: str = Field(min_length=1, description="Dataset file or folder, as given to the trainer.")
    split: str = Field(min_length=1, description="Split the numbers are measured on.")
    images: int = Field(ge=1)
    float_accuracy: float = Field(ge=0, le=1)
    int8_accuracy: float = Field(ge=0, le=1, description="The .tflite file run by the agent's interpreter.")
    int8_simulated_accuracy: float = Field(
        ge=0, le=1, description="The quantized PyTorch graph the file was converted from, run by PyTorch."
    )
    accuracy_drop_points: float = Field(description="(float - int8 accuracy) x 100.")
    max_drop_points: float = Field(description="Largest drop, in points, the export accepted.")
    float_macro_f1: float = Field(ge=0, le=1)
    int8_macro_f1: float = Field(ge=0, le=1)
    per_class: tuple[ClassMetrics, ...] = Field(min_length=1)
    parameters: int = Field(ge=1, description="Parameters of the float model.")
    file_size_bytes: int = Field(ge=1)
    latency_ms_per_image: float = Field(
        gt=0, description="Median time of one invoke with batch 1 and 1 thread, on the exporting machine."
    )
    latency_machine: str = Field(min_length=1, description="Machine and interpreter of the latency.")
    calibration_images: int = Field(ge=1, description="Training images the activation ranges were calibrated on.")


class ModelCard(_Record):
    """Machine-readable card of one emotion model file."""

    card_schema_version: Literal[1] = CARD_SCHEMA_VERSION
    model_name: str = Field(min_length=1)
    file_name: str = Field(min_length=1, description="Name of the .tflite file at export; informational.")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="SHA-256 of the .tflite file.")
    license: str = Field(min_length=1)
    labels: tuple[str, ...] = Field(min_length=2, max_length=32, description="Class names in output order.")
    input: InputSpec
    input_tensor: TensorSpec
    output: OutputSpec
    provenance: Provenance
    export: ExportSettings
    quantization_agreement: Agreement = Field(
        description=(
            "int8 file against the float model it was exported from, on crops not used for calibration."
        )
    )
    source_agreement: Agreement | None = Field(
        default=None, description="Float model against the original weights' own runtime, when one exists."
    )
    evaluation: Evaluation | None = Field(
        default=None, description="Accuracy on a labelled test split; absent for models exported without one."
    )

    @field_validator("labels")
    @classmethod
    def _check_labels(cls, labels: tuple[str, ...]) -> tuple[str, ...]:
        for label in labels:
            if not LABEL_PATTERN.match(label):
                raise ValueError(f"invalid label {label!r}: use lowercase letters, digits and '_'")
        if len(set(labels)) != len(labels):
            raise ValueError(f"labels contain duplicates: {list(labels)}")
        return labels

    @model_validator(mode="after")
    def _check_square_input(self) -> ModelCard:
        if self.input.height != self.input.width:
            raise ValueError(f"input must be square, got {self.input.height}x{self.input.width}")
        return self

    def to_json(self) -> str:
        """Serialize as indented JSON with fields in declaration order, so reruns diff cleanly.

        An absent ``evaluation`` is left out rather than written as null, so cards of models
        exported without a test split stay byte-identical to those written before the field existed.
        """
        data = self.model_dump(mode="json")
        if data.get("evaluation") is None:
            data.pop("evaluation", None)
        # Likewise for the quantization method fields, added after the bundled card was written.
        for key in ("method", "qat_epochs", "qat_learning_rate"):
            if data["export"].get(key) is None:
                data["export"].pop(key, None)
        return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def card_path_for(model_path: Path) -> Path:
    """Return the path of the card that belongs to a model file."""
    return Path(model_path).with_suffix(CARD_SUFFIX)


def file_sha256(path: Path) -> str:
    """Return the hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_model_card(model_path: Path) -> ModelCard:
    """Read and validate the card beside ``model_path`` and check the model's sha256 against it.

    Raises:
        ModelError: the model or its card is missing, the card is not valid JSON or breaks
            the schema, or the model file's sha256 differs from the card's.
    """
    model_path = Path(model_path)
    card_path = card_path_for(model_path)
    if not model_path.is_file():
        raise ModelError(f"Model file not found: {model_path}. Check classifier.model in the config.")
    if not card_path.is_file():
        raise ModelError(
            f"Model card not found: {card_path}. Every emotion model needs its card beside it with the same "
            "name and a .json suffix; copy the card that was exported with the model."
        )
    try:
        data = json.loads(card_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelError(f"Cannot read model card {card_path}: {error}") from None
    try:
        card = ModelCard.model_validate(data)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in item['loc']) or 'card'}: {item['msg']}"
            for item in error.errors()
        )
        raise ModelError(f"Invalid model card {card_path}: {problems}") from None

    actual = file_sha256(model_path)
    if actual != card.sha256:
        raise ModelError(
            f"{model_path} has sha256 {actual}, but its card {card_path} records {card.sha256}: the model "
            "and "
            "the card come from different exports. Use the card exported with this model, or rerun the "
            "export."
        )
    return card
