"""Accuracy, macro-F1 and per-class recall of predictions, and evaluation of exported .tflite files.

``evaluate_exported`` runs a model file through ``EmotionClassifier.predict_crops``, the
code path of the edge agent, so the numbers are those of the file as the Pi runs it.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_f1_score,
    multiclass_recall,
)

from edge_agent.classifier import EmotionClassifier, Int8ImageModel
from edge_agent.runtime import interpreter_class
from trainer.data import ImageSet

#: Images timed for the latency per image, after ``LATENCY_WARMUP`` untimed invokes.
LATENCY_IMAGES = 200
LATENCY_WARMUP = 10


@dataclass(frozen=True)
class Scores:
    """Accuracy, macro-F1, and recall, F1 and image count per class, of one set of predictions."""

    accuracy: float
    macro_f1: float
    recall: tuple[float, ...]
    f1: tuple[float, ...]
    images_per_class: tuple[int, ...]

    def describe(self, labels: tuple[str, ...]) -> str:
        recalls = ", ".join(f"{label} {value:.3f}" for label, value in zip(labels, self.recall, strict=True))
        return f"accuracy {self.accuracy:.4f}, macro-F1 {self.macro_f1:.4f}, recall: {recalls}"


def score_predictions(probabilities: np.ndarray, labels: np.ndarray, num_classes: int) -> Scores:
    """Score (N, classes) probabilities against (N,) true label indices with torchmetrics.

    A class without images in ``labels`` counts with recall 0 and F1 0 in the macro average,
    as in torchmetrics.
    """
    predictions = torch.from_numpy(np.asarray(probabilities, dtype=np.float32))
    target = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    return Scores(
        accuracy=float(multiclass_accuracy(predictions, target, num_classes, average="micro")),
        macro_f1=float(multiclass_f1_score(predictions, target, num_classes, average="macro")),
        recall=tuple(float(value) for value in multiclass_recall(predictions, target, num_classes, average="none")),
        f1=tuple(float(value) for value in multiclass_f1_score(predictions, target, num_classes, average="none")),
        images_per_class=tuple(int(count) for count in np.bincount(labels, minlength=num_classes)),
    )


def evaluate_exported(model_path: Path, images: ImageSet) -> tuple[Scores, EmotionClassifier]:
    """Score a .tflite file with its card on labelled images, through the agent's classifier.

    Images of another size than the card's input are resized with the card's interpolation,
    as the agent does with its crops.
    """
    classifier = EmotionClassifier(Path(model_path))
    probabilities = classifier.predict_crops(images.images)
    return score_predictions(probabilities, images.labels, len(classifier.labels)), classifier


def predict_graph(graph: torch.nn.Module, images: np.ndarray) -> np.ndarray:
    """Run a quantized PT2E graph that takes (1, S, S, 1) raw pixels on uint8 images (N, S, S)."""
    outputs = []
    with torch.no_grad():
        for image in images:
            value = torch.from_numpy(image.astype(np.float32))[None, :, :, None]
            outputs.append(graph(value).numpy()[0])
    return np.stack(outputs).astype(np.float32)


def measure_latency_ms(model: Int8ImageModel, images: np.ndarray) -> float:
    """Return the median milliseconds of one invoke with one image, over up to ``LATENCY_IMAGES`` images.

    ``model`` should run with 1 thread, as on the Pi. The number describes the machine it ran on.
    """
    sample = images[: LATENCY_WARMUP + LATENCY_IMAGES]
    for image in sample[:LATENCY_WARMUP]:
        model.predict(image[None])
    times_ms = []
    for image in sample[LATENCY_WARMUP:] if len(sample) > LATENCY_WARMUP else sample:
        start = time.perf_counter()
        model.predict(image[None])
        times_ms.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times_ms)


def describe_machine() -> str:
    """Return the CPU architecture, core count and interpreter package of this machine."""
    _, package = interpreter_class()
    return f"{platform.machine()}, {os.cpu_count()} cores, {package}, 1 thread"
