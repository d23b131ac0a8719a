"""Export of a trained model with a labelled dataset: quantize with train, measure on test, gate on the drop.

``run_dataset_export`` quantizes the model with the training split, either calibrated on
images drawn from it (PTQ) or fine-tuned on it with fake quantization (QAT, see
``trainer.qat``). It converts the result with litert-torch, and scores the float model,
the quantized PyTorch graph and the .tflite file (through the agent's classifier) on the
test split. The card gets an ``evaluation`` section and names the method. When int8
accuracy falls more than ``max_drop_points`` below float accuracy, the export raises
``AccuracyDropError`` and writes nothing, and an earlier export at the same path stays
untouched.
"""

from __future__ import annotations

import copy
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edge_agent.classifier import DEFAULT_MARGIN, Int8ImageModel
from edge_agent.model_card import (
    ClassMetrics,
    Evaluation,
    ExportSettings,
    InputSpec,
    ModelCard,
    OutputSpec,
    Provenance,
    file_sha256,
)
from trainer.card import write_cards
from trainer.data import ImageSet
from trainer.errors import AccuracyDropError, ExportError
from trainer.evaluation import (
    Scores,
    describe_machine,
    evaluate_exported,
    measure_latency_ms,
    predict_graph,
    score_predictions,
)
from trainer.export import (
    convert_to_int8_tflite,
    measure_agreement,
    predict_float,
    tool_versions,
    verify_int8_only,
    write_quantized_tflite,
)
from trainer.models import NORMALIZED_PIXEL_RANGE, RAW_PIXEL_RANGE, count_parameters, fold_input_scaling
from trainer.pipeline import FOLD_TOLERANCE, ExportResult, seed_everything
from trainer.qat import train_qat
from trainer.quantization import QuantizationSettings

log = logging.getLogger(__name__)

#: Largest accuracy loss from float to int8, in percentage points, that an export accepts by default.
DEFAULT_MAX_DROP_POINTS = 1.5
#: Training images drawn for calibration by default.
DEFAULT_CALIBRATION_IMAGES = 500


@dataclass(frozen=True)
class DatasetExportRequest:
    """A trained model, its data splits and where and how to export it.

    ``calibration_images`` applies to PTQ. ``augmentation`` and ``class_balance`` are the
    training run's, and apply to QAT (see ``trainer.qat.train_qat``).
    """

    model: torch.nn.Module
    architecture: str
    labels: tuple[str, ...]
    train: ImageSet
    test: ImageSet
    dataset: str
    test_split: str
    source_checkpoint: Path
    output_path: Path
    command: str
    model_name: str
    calibration_images: int = DEFAULT_CALIBRATION_IMAGES
    max_drop_points: float = DEFAULT_MAX_DROP_POINTS
    margin: float = DEFAULT_MARGIN
    interpolation: str = "area"
    seed: int = 0
    license: str = "MIT"
    quantization: QuantizationSettings = QuantizationSettings()
    augmentation: torch.nn.Module | None = None
    class_balance: str = "none"


@dataclass(frozen=True)
class _Quantized:
    """The converted PyTorch graph of an export, and the images its activation ranges came from."""

    graph: torch.fx.GraphModule
    calibration_images: int
    calibration_set: str


def draw_calibration_images(train: ImageSet, count: int, seed: int) -> np.ndarray:
    """Draw ``count`` training images (all when there are fewer), without replacement, seeded."""
    if count < 1:
        raise ExportError(f"calibration_images must be at least 1, got {count}")
    generator = np.random.default_rng(seed)
    indices = generator.permutation(len(train))[:count]
    return train.images[np.sort(indices)]


def run_dataset_export(request: DatasetExportRequest) -> ExportResult:
    """Quantize on train, convert, score on test, enforce the drop limit and write the model and cards."""
    seed_everything(request.seed)
    model = copy.deepcopy(request.model).cpu().eval()
    size = model.input_size
    if request.test.images.shape[1:] != (size, size) or request.train.images.shape[1:] != (size, size):
        raise ExportError(f"the images must be {size}x{size}, the model's input size: resize the dataset to it")

    raw_model = _raw_pixel_model(model, request.test.images[:64])
    num_classes = len(request.labels)
    float_probabilities = predict_float(raw_model, request.test.images)
    float_scores = score_predictions(float_probabilities, request.test.labels, num_classes)
    log.info("float %s on %s: %s", request.architecture, request.test_split, float_scores.describe(request.labels))

    output_path = Path(request.output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    # Staged beside the output, on the same file system, so the final moves are atomic renames.
    with tempfile.TemporaryDirectory(prefix=".export-", dir=output_path.parent) as folder:
        staged = Path(folder) / output_path.name
        quantized = _quantize(request, raw_model, staged)
        inventory = verify_int8_only(staged)
        simulated_scores = score_predictions(
            predict_graph(quantized.graph, request.test.images), request.test.labels, num_classes
        )
        int8_model = Int8ImageModel(staged, size, num_classes, pixel_range=RAW_PIXEL_RANGE, threads=1)
        int8_probabilities = int8_model.predict(request.test.images)
        latency_ms = measure_latency_ms(int8_model, request.test.images)

        card = _card(request, staged, inventory, float_probabilities, int8_probabilities, quantized)
        card = card.model_copy(
            update={
                "evaluation": _evaluation(
                    request, model, float_scores, simulated_scores, staged, latency_ms, quantized.calibration_images
                )
            }
        )
        # The card's int8 numbers must be what the agent's own classifier reads from the file.
        write_cards(card, staged, staged.stat().st_size)
        agent_scores, _ = evaluate_exported(staged, request.test)
        evaluation = card.evaluation
        if round(agent_scores.accuracy, 4) != evaluation.int8_accuracy:
            raise ExportError(
                f"the agent's classifier scores {agent_scores.accuracy:.4f} on {staged}, the in-process "
                f"int8 model {evaluation.int8_accuracy:.4f}: the card's preprocessing does not match the export"
            )
        log.info("int8 file on %s: %s", request.test_split, agent_scores.describe(request.labels))
        if evaluation.accuracy_drop_points > request.max_drop_points:
            raise AccuracyDropError(
                f"int8 accuracy {evaluation.int8_accuracy:.2%} is {evaluation.accuracy_drop_points:.2f} points "
                f"below float accuracy {evaluation.float_accuracy:.2%} on {evaluation.images} {request.test_split} "
                f"images, more than the limit of {request.max_drop_points} points. Nothing was written to "
                f"{output_path}. {_drop_advice(request.quantization)}"
            )
        for suffix in (".json", ".md", output_path.suffix):
            os.replace(staged.with_suffix(suffix), output_path.with_suffix(suffix))

    size_bytes = output_path.stat().st_size
    log.info("Wrote %s and its cards", output_path)
    return ExportResult(card, output_path, output_path.with_suffix(".json"), output_path.with_suffix(".md"), size_bytes)


def _quantize(request: DatasetExportRequest, raw_model: torch.nn.Module, staged: Path) -> _Quantized:
    """Quantize by the request's method and write the .tflite file to ``staged``."""
    settings = request.quantization
    if settings.method == "qat":
        result = train_qat(
            raw_model,
            request.train,
            settings,
            augmentation=request.augmentation,
            class_balance=request.class_balance,
            seed=request.seed,
        )
        write_quantized_tflite(result.graph, result.quantizer, raw_model.input_size, staged)
        return _Quantized(
            graph=result.graph,
            calibration_images=result.training_images,
            calibration_set=(
                f"activation ranges are moving averages over {settings.epochs} QAT epochs ({result.steps} steps) "
                f"on the {result.training_images} images of the training split of {request.dataset}"
            ),
        )
    calibration = draw_calibration_images(request.train, request.calibration_images, request.seed)
    graph = convert_to_int8_tflite(raw_model, calibration, staged)
    return _Quantized(
        graph=graph,
        calibration_images=len(calibration),
        calibration_set=f"{len(calibration)} images drawn at random from the training split of {request.dataset}",
    )


def _drop_advice(settings: QuantizationSettings) -> str:
    if settings.method == "qat":
        return (
            "Train with quantization for more epochs (--qat-epochs) or at another learning rate "
            "(--qat-learning-rate), or raise --max-drop-points"
        )
    return (
        "Calibrate on more images (--calibration-images), train with quantization "
        "(--quantization qat), or raise --max-drop-points"
    )


def _raw_pixel_model(model: torch.nn.Module, check_images: np.ndarray) -> torch.nn.Module:
    if model.pixel_range == RAW_PIXEL_RANGE:
        return model
    if model.pixel_range != NORMALIZED_PIXEL_RANGE:
        raise ExportError(f"cannot export a model that takes pixels in {model.pixel_range}")
    raw_model = fold_input_scaling(copy.deepcopy(model))
    difference = float(np.abs(predict_float(raw_model, check_images) - predict_float(model, check_images)).max())
    if difference > FOLD_TOLERANCE:
        raise ExportError(
            f"folding the input scaling changed probabilities by up to {difference:.2g} (tolerance "
            f"{FOLD_TOLERANCE}): the first layer must be an unpadded convolution without bias"
        )
    return raw_model


def _card(request, staged, inventory, float_probabilities, int8_probabilities, quantized: _Quantized) -> ModelCard:
    versions = tool_versions()
    size = request.model.input_size
    return ModelCard(
        model_name=request.model_name,
        file_name=request.output_path.name,
        sha256=file_sha256(staged),
        license=request.license,
        labels=request.labels,
        input=InputSpec(
            height=size,
            width=size,
            pixel_range=RAW_PIXEL_RANGE,
            crop_margin=request.margin,
            resize_interpolation=request.interpolation,
        ),
        input_tensor=inventory.input_tensor,
        output=OutputSpec(kind="probabilities", tensor=inventory.output_tensor),
        provenance=_provenance(request),
        export=ExportSettings(
            exporter=f"litert-torch {versions['litert-torch']}",
            torch_version=versions["torch"],
            torchao_version=versions["torchao"],
            quantization=request.quantization.describe(),
            method=request.quantization.method,
            qat_epochs=request.quantization.epochs if request.quantization.method == "qat" else None,
            qat_learning_rate=request.quantization.learning_rate if request.quantization.method == "qat" else None,
            calibration_crops=quantized.calibration_images,
            calibration_set=quantized.calibration_set,
            seed=request.seed,
            command=request.command,
        ),
        quantization_agreement=measure_agreement(
            int8_probabilities,
            float_probabilities,
            candidate_name="int8 TFLite",
            reference_name="float PyTorch model",
            crop_set=f"{request.test_split} split of {request.dataset}",
        ),
    )


def _provenance(request: DatasetExportRequest) -> Provenance:
    from trainer.card import FER_MINI_XCEPTION_PROVENANCE

    papers = {
        "mini_xception": FER_MINI_XCEPTION_PROVENANCE["paper"],
        "ds_cnn": (
            "depthwise-separable CNN of this project (trainer.models.DSCNN), after A. G. Howard et al.: "
            "MobileNets, arXiv:1704.04861, 2017"
        ),
    }
    return Provenance(
        architecture={"mini_xception": "mini-Xception", "ds_cnn": "DSCNN"}.get(request.architecture, request.architecture),
        source_weights=request.source_checkpoint.name,
        source_sha256=file_sha256(request.source_checkpoint),
        origin="trained with the classroom-emotion-stats trainer",
        origin_license=request.license,
        paper=papers.get(request.architecture, request.architecture),
        training_data=f"{request.dataset}: {len(request.train)} training images in {len(request.labels)} classes",
        reported_metrics=None,
    )


def _evaluation(
    request: DatasetExportRequest,
    model: torch.nn.Module,
    float_scores: Scores,
    simulated_scores: Scores,
    staged: Path,
    latency_ms: float,
    calibration_count: int,
) -> Evaluation:
    int8_model = Int8ImageModel(staged, model.input_size, len(request.labels), pixel_range=RAW_PIXEL_RANGE)
    int8_scores = score_predictions(int8_model.predict(request.test.images), request.test.labels, len(request.labels))
    per_class = tuple(
        ClassMetrics(
            label=label,
            images=int8_scores.images_per_class[index],
            float_recall=round(float_scores.recall[index], 4),
            int8_recall=round(int8_scores.recall[index], 4),
            int8_f1=round(int8_scores.f1[index], 4),
        )
        for index, label in enumerate(request.labels)
    )
    return Evaluation(
        dataset=request.dataset,
        split=request.test_split,
        images=len(request.test),
        float_accuracy=round(float_scores.accuracy, 4),
        int8_accuracy=round(int8_scores.accuracy, 4),
        int8_simulated_accuracy=round(simulated_scores.accuracy, 4),
        accuracy_drop_points=round((float_scores.accuracy - int8_scores.accuracy) * 100, 2),
        max_drop_points=request.max_drop_points,
        float_macro_f1=round(float_scores.macro_f1, 4),
        int8_macro_f1=round(int8_scores.macro_f1, 4),
        per_class=per_class,
        parameters=count_parameters(model),
        file_size_bytes=staged.stat().st_size,
        latency_ms_per_image=round(latency_ms, 4),
        latency_machine=describe_machine(),
        calibration_images=calibration_count,
    )
