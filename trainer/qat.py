"""Quantization-aware training (QAT): fine-tune a float model with fake int8 quantization before export.

The model is exported to a PT2E graph with fake-quantize modules (values rounded to the
int8 grid in the forward pass, gradients passed straight through), trained for
``QuantizationSettings.epochs`` epochs on the whole training split, and converted. The
weights learn to tolerate int8 rounding, and the activation ranges are moving averages
over the training batches. The converted graph goes to the same converter and checks as
a PTQ graph, so the file has the same int8 interface.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch.fx import GraphModule
from torch.utils.data import DataLoader, TensorDataset, WeightedRandomSampler
from torchao.quantization.pt2e import move_exported_model_to_train

from trainer.data import ImageSet, class_weights
from trainer.errors import ExportError
from trainer.export import check_raw_pixel_model
from trainer.models import ChannelsLastInput
from trainer.quantization import QuantizationSettings
from trainer.quantize import EmotionQuantizer, finish_qat_model, prepare_qat_model, softmax_output_fake_quantizers

log = logging.getLogger(__name__)

# Probabilities are clamped before the log so that a float32 underflow to 0 gives a large
# but finite loss.
_MIN_PROBABILITY = 1e-12


@dataclass(frozen=True)
class QatResult:
    """A converted QAT graph with its quantizer (both needed by the converter) and what the training saw."""

    graph: GraphModule
    quantizer: EmotionQuantizer
    training_images: int
    steps: int
    last_epoch_loss: float


def train_qat(
    model: torch.nn.Module,
    train: ImageSet,
    settings: QuantizationSettings,
    augmentation: torch.nn.Module | None = None,
    class_balance: str = "none",
    seed: int = 0,
) -> QatResult:
    """Fine-tune a raw-pixel model with fake int8 quantization on ``train`` and return the converted graph.

    ``model`` is left unchanged. ``augmentation`` takes float (N, 1, S, S) images in [0, 1],
    as ``EmotionModule.augmentation`` does. ``class_balance`` is the training run's:
    ``loss`` weights the loss by inverse class frequency, ``sampler`` draws images with
    inverse-frequency probabilities, ``none`` does neither. Runs on the CPU in this process.

    The returned graph takes float (1, S, S, 1) raw pixels, like the graph of ``quantize_model``.
    """
    if settings.method != "qat":
        raise ValueError(f"train_qat needs method 'qat', got {settings.method!r}")
    check_raw_pixel_model(model)
    if class_balance not in ("loss", "sampler", "none"):
        raise ExportError(f"class_balance is {class_balance!r}: use 'loss', 'sampler' or 'none'")
    size = model.input_size
    if train.images.shape[1:] != (size, size):
        raise ExportError(f"the training images are {train.images.shape[1:]}, the model takes {size}x{size}")
    if len(train) < 2:
        raise ExportError(f"QAT needs at least 2 training images, the split has {len(train)}")

    wrapped = ChannelsLastInput(copy.deepcopy(model).cpu())
    prepared, quantizer = prepare_qat_model(wrapped, torch.zeros(2, size, size, 1))
    fixed_output_quantizers = softmax_output_fake_quantizers(prepared)
    for module in fixed_output_quantizers:
        module.disable_fake_quant()

    loader = _training_loader(train, model.num_classes, settings.batch_size, class_balance, seed)
    steps = settings.epochs * len(loader)
    optimizer = torch.optim.Adam(prepared.parameters(), lr=settings.learning_rate)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    loss_weights = None
    if class_balance == "loss":
        loss_weights = torch.from_numpy(class_weights(train.labels, model.num_classes)).float()

    move_exported_model_to_train(prepared)
    log.info(
        "QAT: %d epochs of %d steps on %d training images, learning rate %g",
        settings.epochs, len(loader), len(train), settings.learning_rate,
    )
    mean_loss = float("nan")
    for epoch in range(settings.epochs):
        losses = []
        for images, labels in loader:
            x = images.float() / 255.0
            if augmentation is not None:
                x = augmentation(x).clamp(0.0, 1.0)
            probabilities = prepared((x * 255.0).permute(0, 2, 3, 1))
            log_probabilities = torch.log(probabilities.clamp_min(_MIN_PROBABILITY))
            loss = torch.nn.functional.nll_loss(log_probabilities, labels, weight=loss_weights)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(float(loss.detach()))
        mean_loss = float(np.mean(losses))
        log.info("QAT epoch %d/%d: mean training loss %.4f", epoch + 1, settings.epochs, mean_loss)

    for module in fixed_output_quantizers:
        module.enable_fake_quant()
    graph = finish_qat_model(prepared)
    return QatResult(graph, quantizer, len(train), steps, mean_loss)


def _training_loader(
    train: ImageSet, num_classes: int, batch_size: int, class_balance: str, seed: int
) -> DataLoader:
    dataset = TensorDataset(torch.from_numpy(train.images).unsqueeze(1), torch.from_numpy(train.labels))
    generator = torch.Generator().manual_seed(seed)
    sampler = None
    if class_balance == "sampler":
        per_class = class_weights(train.labels, num_classes)
        sampler = WeightedRandomSampler(
            torch.from_numpy(per_class[train.labels].astype(np.float64)),
            num_samples=len(train),
            replacement=True,
            generator=generator,
        )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        generator=generator if sampler is None else None,
        # A short last batch would give batch norm the statistics of a few images only.
        drop_last=len(train) > batch_size,
    )
