"""Emotion classifier architectures.

``MiniXception`` is the mini-Xception of Arriaga, Valdenegro-Toro and Plöger, "Real-time
Convolutional Neural Networks for Emotion and Gender Classification" (2017): two 3x3 stem
convolutions, four residual modules of depthwise-separable convolutions, a 3x3 head
convolution with one output channel per class, global average pooling and softmax.

The layout follows the Keras 2 model that ``trainer.keras_import`` loads, so that its
weights map one to one:

- Keras ``'same'`` padding at stride 2 puts the extra row and column at the bottom and
  right, where PyTorch pads both sides equally. ``_keras_same_max_pool`` chooses the
  PyTorch pooling that gives the same windows for the size it will see.
- Keras ``BatchNormalization`` uses epsilon 1e-3, PyTorch's default is 1e-5.

Both mistakes still run, but each one changes the predictions on real faces.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

#: Keras' BatchNormalization default epsilon.
KERAS_BATCH_NORM_EPS = 1e-3

#: Channels of the two stem convolutions and of the four residual modules of the original.
STEM_CHANNELS = 8
MODULE_CHANNELS = (16, 32, 64, 128)

#: Pixel range of the input of the original model: gray values scaled by 1/127.5 and shifted by -1.
NORMALIZED_PIXEL_RANGE = (-1.0, 1.0)
RAW_PIXEL_RANGE = (0.0, 255.0)


def _keras_same_max_pool(size_px: int) -> nn.MaxPool2d:
    """Return a 3x3 stride-2 max pooling that matches Keras 'same' padding on a size_px input.

    Keras pads ``max((ceil(n / 2) - 1) * 2 + 3 - n, 0)`` in total, the smaller half at the top
    and left. For even ``n`` that is one row at the bottom only, which ``ceil_mode`` reproduces
    (the window that runs past the edge is clipped). For odd ``n`` it is one row on each side.
    """
    if size_px % 2 == 0:
        return nn.MaxPool2d(kernel_size=3, stride=2, padding=0, ceil_mode=True)
    return nn.MaxPool2d(kernel_size=3, stride=2, padding=1)


class SeparableConv2d(nn.Sequential):
    """Keras SeparableConv2D without bias: 3x3 depthwise then 1x1 pointwise convolution."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(in_channels, in_channels, 3, padding=1, groups=in_channels, bias=False)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=False)


class ResidualModule(nn.Module):
    """Two separable convolutions and a max pooling, plus a 1x1 stride-2 shortcut convolution."""

    def __init__(self, in_channels: int, out_channels: int, input_size_px: int) -> None:
        super().__init__()
        self.shortcut_conv = nn.Conv2d(in_channels, out_channels, 1, stride=2, bias=False)
        self.shortcut_bn = nn.BatchNorm2d(out_channels, eps=KERAS_BATCH_NORM_EPS)
        self.separable1 = SeparableConv2d(in_channels, out_channels)
        self.bn1 = nn.BatchNorm2d(out_channels, eps=KERAS_BATCH_NORM_EPS)
        self.relu = nn.ReLU()
        self.separable2 = SeparableConv2d(out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels, eps=KERAS_BATCH_NORM_EPS)
        self.pool = _keras_same_max_pool(input_size_px)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.shortcut_bn(self.shortcut_conv(x))
        x = self.relu(self.bn1(self.separable1(x)))
        x = self.pool(self.bn2(self.separable2(x)))
        return torch.add(x, shortcut)


class MiniXception(nn.Module):
    """Mini-Xception for square gray faces; forward returns class probabilities.

    Input: (N, 1, input_size, input_size) float in ``pixel_range``. The original expects
    [-1, 1]; ``fold_input_scaling`` turns a model into one that takes raw pixels 0..255.
    Output: (N, num_classes) softmax probabilities.
    """

    def __init__(
        self,
        input_size: int = 64,
        num_classes: int = 7,
        stem_channels: int = STEM_CHANNELS,
        module_channels: Sequence[int] = MODULE_CHANNELS,
    ) -> None:
        super().__init__()
        if input_size < 16:
            raise ValueError(f"input_size must be at least 16 pixels, got {input_size}")
        self.input_size = input_size
        self.num_classes = num_classes
        self.pixel_range = NORMALIZED_PIXEL_RANGE

        # The stem convolutions use 'valid' padding, which fold_input_scaling relies on.
        self.stem_conv1 = nn.Conv2d(1, stem_channels, 3, bias=False)
        self.stem_bn1 = nn.BatchNorm2d(stem_channels, eps=KERAS_BATCH_NORM_EPS)
        self.stem_conv2 = nn.Conv2d(stem_channels, stem_channels, 3, bias=False)
        self.stem_bn2 = nn.BatchNorm2d(stem_channels, eps=KERAS_BATCH_NORM_EPS)
        self.relu = nn.ReLU()

        size_px = input_size - 4
        modules = []
        in_channels = stem_channels
        for out_channels in module_channels:
            modules.append(ResidualModule(in_channels, out_channels, size_px))
            in_channels = out_channels
            size_px = (size_px + 1) // 2
        self.residual_modules = nn.Sequential(*modules)

        self.head_conv = nn.Conv2d(in_channels, num_classes, 3, padding=1, bias=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.softmax = nn.Softmax(dim=1)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Return the (N, num_classes) scores before softmax."""
        x = self.relu(self.stem_bn1(self.stem_conv1(x)))
        x = self.relu(self.stem_bn2(self.stem_conv2(x)))
        x = self.residual_modules(x)
        x = self.pool(self.head_conv(x))
        # Softmax runs on a 2-D tensor: litert-torch 0.10 lowers softmax over a 4-D tensor
        # to float elementwise ops instead of one quantizable SOFTMAX.
        return torch.flatten(x, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.softmax(self.logits(x))


@torch.no_grad()
def fold_input_scaling(model: nn.Module) -> nn.Module:
    """Make ``model`` take raw pixels 0..255 instead of [-1, 1], in place, and return it.

    The original computes ``conv1(x / 127.5 - 1)``. Because conv1 has no padding, every
    output sums the full kernel, so this equals ``conv1'(x) - sum(W)`` with ``W' = W / 127.5``.
    The constant ``sum(W)`` per output channel moves into the running mean of the batch
    normalization that follows, so no float op stays in front of the first convolution
    and the structure of the model does not change.

    Works for any model with a ``pixel_range`` attribute, an unpadded bias-free
    ``stem_conv1`` and a ``stem_bn1`` right after it (``MiniXception`` and ``DSCNN``).
    """
    if model.pixel_range != NORMALIZED_PIXEL_RANGE:
        raise ValueError(f"model already takes pixels in {model.pixel_range}, not {NORMALIZED_PIXEL_RANGE}")
    conv = model.stem_conv1
    if conv.padding != (0, 0) or conv.bias is not None:
        raise ValueError("fold_input_scaling needs a stem convolution without padding and bias")
    kernel_sums = conv.weight.sum(dim=(1, 2, 3))
    conv.weight.div_(127.5)
    model.stem_bn1.running_mean.add_(kernel_sums)
    model.pixel_range = RAW_PIXEL_RANGE
    return model


class ChannelsLastInput(nn.Module):
    """Wrap a model so that it takes (N, H, W, 1) input, the layout of TFLite image models."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.permute(0, 3, 1, 2))


#: Output channels of the DSCNN stem and of its depthwise-separable blocks, with their strides.
DSCNN_STEM_CHANNELS = 16
DSCNN_BLOCKS = ((32, 1), (64, 2), (64, 1), (128, 2), (128, 1))


class DepthwiseSeparableBlock(nn.Sequential):
    """3x3 depthwise convolution, batch norm, ReLU, 1x1 pointwise convolution, batch norm, ReLU.

    ReLU, not ReLU6 or a swish: litert-torch 0.10 fuses conv, batch norm and ReLU into one int8
    CONV_2D or DEPTHWISE_CONV_2D, so the block adds no separate activation op.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(
            in_channels, in_channels, 3, stride=stride, padding=1, groups=in_channels, bias=False
        )
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.relu1 = nn.ReLU()
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu2 = nn.ReLU()


class DSCNN(nn.Module):
    """Small depthwise-separable CNN for int8 inference on ARM CPUs; forward returns probabilities.

    A MobileNet-style stack (Howard et al., "MobileNets", 2017): one unpadded 3x3 stem
    convolution at stride 2, five depthwise-separable blocks that halve the resolution twice more,
    a 1x1 head convolution with one output channel per class, global average pooling and
    softmax. Every op is one that PT2E and litert-torch quantize to int8 (convolution,
    batch norm folded into it, ReLU, average pooling, softmax on a 2-D tensor), and the
    unpadded bias-free stem lets ``fold_input_scaling`` remove the input normalization.

    Input and output as for ``MiniXception``: (N, 1, input_size, input_size) in ``pixel_range``,
    (N, num_classes) probabilities. ``width`` scales every channel count.
    """

    def __init__(self, input_size: int = 48, num_classes: int = 7, width: float = 1.0) -> None:
        super().__init__()
        if input_size < 16:
            raise ValueError(f"input_size must be at least 16 pixels, got {input_size}")
        if width <= 0:
            raise ValueError(f"width must be positive, got {width}")
        self.input_size = input_size
        self.num_classes = num_classes
        self.pixel_range = NORMALIZED_PIXEL_RANGE

        stem_channels = max(8, round(DSCNN_STEM_CHANNELS * width))
        self.stem_conv1 = nn.Conv2d(1, stem_channels, 3, stride=2, bias=False)
        self.stem_bn1 = nn.BatchNorm2d(stem_channels)
        self.relu = nn.ReLU()
        blocks = []
        in_channels = stem_channels
        for channels, stride in DSCNN_BLOCKS:
            out_channels = max(8, round(channels * width))
            blocks.append(DepthwiseSeparableBlock(in_channels, out_channels, stride))
            in_channels = out_channels
        self.blocks = nn.Sequential(*blocks)
        self.head_conv = nn.Conv2d(in_channels, num_classes, 1, bias=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.softmax = nn.Softmax(dim=1)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Return the (N, num_classes) scores before softmax."""
        x = self.relu(self.stem_bn1(self.stem_conv1(x)))
        x = self.blocks(x)
        # Pool before the flatten so that softmax sees a 2-D tensor, as in MiniXception.
        return torch.flatten(self.pool(self.head_conv(x)), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.softmax(self.logits(x))


#: Architectures the trainer builds by name.
ARCHITECTURES = ("mini_xception", "ds_cnn")


def build_model(architecture: str, input_size: int, num_classes: int, width: float = 1.0) -> nn.Module:
    """Build an untrained model by architecture name (see ``ARCHITECTURES``)."""
    if architecture == "mini_xception":
        return MiniXception(input_size=input_size, num_classes=num_classes)
    if architecture == "ds_cnn":
        return DSCNN(input_size=input_size, num_classes=num_classes, width=width)
    raise ValueError(f"unknown architecture {architecture!r}: use one of {', '.join(ARCHITECTURES)}")


def count_parameters(model: nn.Module) -> int:
    """Return the number of trainable and frozen parameters (batch norm statistics excluded)."""
    return sum(parameter.numel() for parameter in model.parameters())
