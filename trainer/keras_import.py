"""Loading of Keras 2 mini-Xception weights from an HDF5 file into ``MiniXception``.

The layer graph is read from the file's ``model_config`` attribute, so the mapping does
not depend on Keras' layer numbering (in the original, ``batch_normalization_3`` belongs
to the first shortcut). Layers are assigned in graph order: the two 'valid' stem
convolutions, then per residual module its two separable convolutions and its 1x1
stride-2 shortcut, then the head convolution with bias. Each convolution's batch
normalization is the layer that consumes it.

Only h5py and torch are needed: Keras itself is not imported.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch
from torch import nn

from trainer.errors import WeightsError
from trainer.models import KERAS_BATCH_NORM_EPS, MiniXception

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class KerasLayer:
    """One layer of the Keras model config with the names of the layers feeding it."""

    name: str
    class_name: str
    config: dict
    inbound: tuple[str, ...]


@dataclass(frozen=True)
class KerasModelInfo:
    """Input shape, class count and Keras version of a Keras HDF5 file."""

    keras_version: str
    backend: str
    input_size: int
    input_channels: int
    num_classes: int
    layer_count: int


def read_layers(weights_path: Path) -> list[KerasLayer]:
    """Return the layers of a Keras functional model in the order of its config."""
    with _open(weights_path) as file:
        config = _model_config(file, weights_path)
    layers = []
    for entry in config["config"]["layers"]:
        inbound = tuple(node[0] for group in entry.get("inbound_nodes", []) for node in group)
        layers.append(KerasLayer(entry["name"], entry["class_name"], entry["config"], inbound))
    return layers


def read_model_info(weights_path: Path) -> KerasModelInfo:
    """Read input shape, class count and Keras version of a mini-Xception HDF5 file."""
    layers = read_layers(weights_path)
    input_layers = [layer for layer in layers if layer.class_name == "InputLayer"]
    if len(input_layers) != 1:
        raise WeightsError(f"{weights_path}: expected one InputLayer, found {len(input_layers)}")
    _, height, width, channels = input_layers[0].config["batch_input_shape"]
    if height != width:
        raise WeightsError(f"{weights_path}: input is {height}x{width}; only square inputs are supported")
    heads = [layer for layer in layers if layer.class_name == "Conv2D" and layer.config.get("use_bias")]
    if len(heads) != 1:
        raise WeightsError(f"{weights_path}: expected one Conv2D with bias (the head), found {len(heads)}")
    with _open(weights_path) as file:
        keras_version = _text(file.attrs.get("keras_version", "unknown"))
        backend = _text(file.attrs.get("backend", "unknown"))
    return KerasModelInfo(
        keras_version=keras_version,
        backend=backend,
        input_size=int(height),
        input_channels=int(channels),
        num_classes=int(heads[0].config["filters"]),
        layer_count=len(layers),
    )


def load_keras_mini_xception(weights_path: Path) -> MiniXception:
    """Build a ``MiniXception`` from the file's input size and class count and load its weights.

    Raises:
        WeightsError: the file is missing, not a Keras 2 HDF5 model, or its layers or weight
            shapes do not match the mini-Xception layout.
    """
    weights_path = Path(weights_path)
    info = read_model_info(weights_path)
    if info.input_channels != 1:
        raise WeightsError(f"{weights_path}: input has {info.input_channels} channels, expected 1 (gray)")
    model = MiniXception(input_size=info.input_size, num_classes=info.num_classes)
    layers = read_layers(weights_path)
    assignments = _assign_layers(layers, model, weights_path)

    with _open(weights_path) as file:
        weights = file["model_weights"]
        for keras_name, target in assignments:
            _load_layer(weights, keras_name, target, weights_path)

    model.eval()
    log.info(
        "Loaded %d layers of %s (Keras %s) into MiniXception(input_size=%d, num_classes=%d)",
        info.layer_count,
        weights_path,
        info.keras_version,
        info.input_size,
        info.num_classes,
    )
    return model


def _assign_layers(
    layers: list[KerasLayer], model: MiniXception, weights_path: Path
) -> list[tuple[str, nn.Module]]:
    """Pair each Keras layer that has weights with the PyTorch module that receives them."""
    consumers: dict[str, list[KerasLayer]] = {}
    for layer in layers:
        for source in layer.inbound:
            consumers.setdefault(source, []).append(layer)

    def batch_norm_after(layer: KerasLayer) -> str:
        following = [c for c in consumers.get(layer.name, []) if c.class_name == "BatchNormalization"]
        if len(following) != 1:
            raise WeightsError(
                f"{weights_path}: layer {layer.name} is not followed by one BatchNormalization"
            )
        epsilon = following[0].config.get("epsilon")
        if epsilon is not None and not np.isclose(epsilon, KERAS_BATCH_NORM_EPS):
            raise WeightsError(
                f"{weights_path}: {following[0].name} has epsilon {epsilon}, MiniXception uses "
                f"{KERAS_BATCH_NORM_EPS}"
            )
        return following[0].name

    stems, shortcuts, heads, separables = [], [], [], []
    for layer in layers:
        if layer.class_name == "SeparableConv2D":
            separables.append(layer)
        elif layer.class_name == "Conv2D" and layer.config.get("use_bias"):
            heads.append(layer)
        elif layer.class_name == "Conv2D" and tuple(layer.config["strides"]) == (2, 2):
            shortcuts.append(layer)
        elif layer.class_name == "Conv2D":
            stems.append(layer)

    module_count = len(model.residual_modules)
    expected = {"stem": (len(stems), 2), "shortcut": (len(shortcuts), module_count)}
    expected["separable"] = (len(separables), 2 * module_count)
    expected["head"] = (len(heads), 1)
    for kind, (found, wanted) in expected.items():
        if found != wanted:
            raise WeightsError(
                f"{weights_path}: found {found} {kind} convolution(s), mini-Xception has {wanted}; "
                "this file is not a mini-Xception"
            )
    for stem in stems:
        if stem.config.get("padding") != "valid":
            raise WeightsError(
                f"{weights_path}: stem {stem.name} uses {stem.config.get('padding')!r} padding"
            )

    assignments: list[tuple[str, nn.Module]] = [
        (stems[0].name, model.stem_conv1),
        (batch_norm_after(stems[0]), model.stem_bn1),
        (stems[1].name, model.stem_conv2),
        (batch_norm_after(stems[1]), model.stem_bn2),
    ]
    for index, module in enumerate(model.residual_modules):
        first, second = separables[2 * index], separables[2 * index + 1]
        assignments += [
            (first.name, module.separable1),
            (batch_norm_after(first), module.bn1),
            (second.name, module.separable2),
            (batch_norm_after(second), module.bn2),
            (shortcuts[index].name, module.shortcut_conv),
            (batch_norm_after(shortcuts[index]), module.shortcut_bn),
        ]
    assignments.append((heads[0].name, model.head_conv))
    return assignments


def _load_layer(weights: h5py.Group, keras_name: str, target: nn.Module, weights_path: Path) -> None:
    if keras_name not in weights:
        raise WeightsError(f"{weights_path}: no weights stored for layer {keras_name}")
    group = weights[keras_name]
    arrays = {}
    for raw_name in group.attrs["weight_names"]:
        name = _text(raw_name)
        # Stored as '<layer>_1/kernel:0': keep the part after the last '/' without ':0'.
        arrays[name.rsplit("/", 1)[-1].split(":")[0]] = np.asarray(group[name])

    if isinstance(target, nn.BatchNorm2d):
        tensors = {
            target.weight: arrays["gamma"],
            target.bias: arrays["beta"],
            target.running_mean: arrays["moving_mean"],
            target.running_var: arrays["moving_variance"],
        }
    elif isinstance(target, nn.Conv2d):
        # Keras kernels are (kh, kw, in, out); PyTorch's are (out, in, kh, kw).
        tensors = {target.weight: arrays["kernel"].transpose(3, 2, 0, 1)}
        if target.bias is not None:
            tensors[target.bias] = arrays["bias"]
    else:
        # Depthwise kernels are (kh, kw, in, multiplier); PyTorch's are (in * multiplier, 1, kh, kw).
        depthwise = arrays["depthwise_kernel"]
        kh, kw, channels, multiplier = depthwise.shape
        tensors = {
            target.depthwise.weight: depthwise.transpose(2, 3, 0, 1).reshape(
                channels * multiplier, 1, kh, kw
            ),
            target.pointwise.weight: arrays["pointwise_kernel"].transpose(3, 2, 0, 1),
        }

    with torch.no_grad():
        for parameter, array in tensors.items():
            if tuple(parameter.shape) != array.shape:
                raise WeightsError(
                    f"{weights_path}: layer {keras_name} has weights of shape {array.shape}, "
                    f"the model expects {tuple(parameter.shape)}"
                )
            parameter.copy_(torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)))


def _open(weights_path: Path) -> h5py.File:
    path = Path(weights_path)
    if not path.is_file():
        hint = "" if path.is_absolute() else (
            f" A relative path is read from the working directory ({Path.cwd()}): run from the repository root "
            "or give an absolute path."
        )
        raise WeightsError(f"Weights file not found: {path}.{hint}")
    try:
        return h5py.File(path, "r")
    except OSError as error:
        raise WeightsError(f"{path} is not an HDF5 file: {error}") from None


def _model_config(file: h5py.File, weights_path: Path) -> dict:
    raw = file.attrs.get("model_config")
    if raw is None or "model_weights" not in file:
        raise WeightsError(
            f"{weights_path} has no model_config or model_weights: save the full Keras model with "
            "model.save(), not only its weights"
        )
    config = json.loads(_text(raw))
    if config.get("class_name") not in ("Model", "Functional"):
        raise WeightsError(
            f"{weights_path}: expected a functional Keras model, got {config.get('class_name')}"
        )
    return config


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
