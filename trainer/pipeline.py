"""The whole export: face crops, calibration, int8 conversion, checks, measurements and cards.

``run_export`` writes the .tflite, its JSON card and its Markdown card side by side. It
converts into a temporary file and moves all three into place only after every check
has passed, so a failed run leaves an earlier export untouched.
"""

from __future__ import annotations

import copy
import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edge_agent.classifier import Int8ImageModel
from edge_agent.faces import FaceDetector
from edge_agent.model_card import (
    Agreement,
    ExportSettings,
    InputSpec,
    ModelCard,
    OutputSpec,
    Provenance,
    file_sha256,
)
from trainer.calibration import CropSettings, extract_face_crops, split_by_frame_parity
from trainer.card import write_cards
from trainer.errors import ExportError
from trainer.export import (
    convert_to_int8_tflite,
    measure_agreement,
    predict_float,
    predict_float_tflite,
    tool_versions,
    verify_int8_only,
)
from trainer.models import NORMALIZED_PIXEL_RANGE, RAW_PIXEL_RANGE, MiniXception, fold_input_scaling

log = logging.getLogger(__name__)

#: Minimum number of calibration crops, and of held-out crops, that an export accepts.
MIN_CROPS = 10
# Largest probability change that folding the input scaling into the first layer may cause.
# The fold is exact in real arithmetic; float32 rounding stays near 1e-6.
FOLD_TOLERANCE = 1e-4

QUANTIZATION_SCHEME = (
    "PT2E static post-training quantization: int8 activations (per-tensor affine, histogram observer), "
    "int8 weights (per-channel symmetric), int32 biases; input scale 1 and zero point -128 "
    "(int8 = gray pixel - 128); softmax output scale 1/256, zero point -128"
)


@dataclass(frozen=True)
class ReferenceModel:
    """A TFLite file of the same weights in their original runtime, to check a port against."""

    path: Path
    pixel_range: tuple[float, float]
    name: str


@dataclass(frozen=True)
class ExportRequest:
    """Everything ``run_export`` needs: the model, where it came from, the media and the output."""

    model: MiniXception
    labels: tuple[str, ...]
    provenance: Provenance
    model_name: str
    output_path: Path
    media: list[Path]
    detector: FaceDetector
    margin: float
    command: str
    interpolation: str = "area"
    frame_step: int = 1
    seed: int = 0
    license: str = "MIT"
    reference: ReferenceModel | None = None
    min_crops: int = MIN_CROPS


@dataclass(frozen=True)
class ExportResult:
    """Paths written by ``run_export`` and the card they carry."""

    card: ModelCard
    model_path: Path
    card_path: Path
    markdown_path: Path
    model_size_bytes: int


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch. Calibration and conversion draw no random numbers today;
    the seed covers observers or augmentations that may."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def run_export(request: ExportRequest) -> ExportResult:
    """Cut crops, check the float model, export to int8, verify, measure and write the cards."""
    seed_everything(request.seed)
    model = copy.deepcopy(request.model).eval()
    if len(request.labels) != model.num_classes:
        raise ExportError(f"{len(request.labels)} labels for a model with {model.num_classes} outputs")

    settings = CropSettings(size=model.input_size, margin=request.margin, interpolation=request.interpolation)
    crops = extract_face_crops(request.media, request.detector, settings, request.frame_step)
    split = split_by_frame_parity(crops, min_crops=request.min_crops)
    log.info("%d calibration crops, %d held-out crops", len(split.calibration), len(split.held_out))

    source_agreement = None
    if request.reference is not None:
        source_agreement = measure_agreement(
            predict_float(model, crops.crops),
            predict_float_tflite(request.reference.path, crops.crops, request.reference.pixel_range),
            candidate_name="float PyTorch port",
            reference_name=request.reference.name,
            crop_set="all face crops of the media",
        )
        log.info("Port vs %s: %s", request.reference.name, _describe(source_agreement))

    raw_model = _raw_pixel_model(model, split.held_out.crops)
    float_held_out = predict_float(raw_model, split.held_out.crops)

    output_path = Path(request.output_path)
    temporary_path = output_path.with_name(f".{output_path.name}.partial")
    try:
        convert_to_int8_tflite(raw_model, split.calibration.crops, temporary_path)
        inventory = verify_int8_only(temporary_path)
        int8_model = Int8ImageModel(
            temporary_path, model.input_size, model.num_classes, pixel_range=RAW_PIXEL_RANGE
        )
        int8_held_out = int8_model.predict(split.held_out.crops)
        quantization_agreement = measure_agreement(
            int8_held_out,
            float_held_out,
            candidate_name="int8 TFLite",
            reference_name="float PyTorch model",
            crop_set="held-out crops: odd sampled video frames",
        )
        log.info("int8 vs float on held-out crops: %s", _describe(quantization_agreement))

        versions = tool_versions()
        card = ModelCard(
            model_name=request.model_name,
            file_name=output_path.name,
            sha256=file_sha256(temporary_path),
            license=request.license,
            labels=request.labels,
            input=InputSpec(
                height=model.input_size,
                width=model.input_size,
                pixel_range=RAW_PIXEL_RANGE,
                crop_margin=request.margin,
                resize_interpolation=request.interpolation,
            ),
            input_tensor=inventory.input_tensor,
            output=OutputSpec(kind="probabilities", tensor=inventory.output_tensor),
            provenance=request.provenance,
            export=ExportSettings(
                exporter=f"litert-torch {versions['litert-torch']}",
                torch_version=versions["torch"],
                torchao_version=versions["torchao"],
                quantization=QUANTIZATION_SCHEME,
                calibration_crops=len(split.calibration),
                calibration_set="even sampled video frames and the photos",
                seed=request.seed,
                command=request.command,
            ),
            quantization_agreement=quantization_agreement,
            source_agreement=source_agreement,
        )
        os.replace(temporary_path, output_path)
    finally:
        temporary_path.unlink(missing_ok=True)

    size_bytes = output_path.stat().st_size
    card_path, markdown_path = write_cards(card, output_path, size_bytes)
    log.info("Wrote %s, %s and %s", output_path, card_path, markdown_path)
    return ExportResult(card, output_path, card_path, markdown_path, size_bytes)


def _raw_pixel_model(model: MiniXception, check_crops: np.ndarray) -> MiniXception:
    """Return a copy of ``model`` that takes raw pixels, checked against the original on crops."""
    if model.pixel_range == RAW_PIXEL_RANGE:
        return model
    if model.pixel_range != NORMALIZED_PIXEL_RANGE:
        raise ExportError(f"cannot export a model that takes pixels in {model.pixel_range}")
    raw_model = fold_input_scaling(copy.deepcopy(model))
    difference = float(
        np.abs(predict_float(raw_model, check_crops) - predict_float(model, check_crops)).max()
    )
    if difference > FOLD_TOLERANCE:
        raise ExportError(
            f"folding the input scaling changed probabilities by up to {difference:.2g} "
            f"(tolerance {FOLD_TOLERANCE}): the first layer must be an unpadded convolution without bias"
        )
    return raw_model


def _describe(agreement: Agreement) -> str:
    return (
        f"{agreement.argmax_agreement * 100:.1f} % same top label on {agreement.crops} crops, "
        f"max abs. difference {agreement.max_abs_probability_diff:.4f}, "
        f"mean {agreement.mean_abs_probability_diff:.5f}"
    )
