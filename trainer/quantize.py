"""Static int8 quantization with PT2E and litert-torch's quantizer, after training or during it.

``quantize_model`` calibrates a trained model (post-training quantization, PTQ).
``prepare_qat_model`` inserts fake-quantize modules for quantization-aware training (QAT,
see ``trainer.qat``). Both use ``EmotionQuantizer``, litert-torch's ``PT2EQuantizer`` with
two additions that keep every tensor of the exported file int8 or int32:

- Softmax gets the fixed output quantization TFLite's int8 SOFTMAX requires (scale 1/256,
  zero point -128). litert-torch 0.10 annotates only ``aten._softmax.default``, but
  torch 2.13's export produces ``aten.softmax.int``, which would otherwise stay float.
- The model input gets scale 1 and zero point -128, so an int8 input value is the gray
  pixel minus 128 with no rounding and no clipping of bright pixels. This needs a model
  that takes raw pixels 0..255 (``trainer.models.fold_input_scaling``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator

import numpy as np
import torch
from litert_torch.quantize import pt2e_quantizer_utils
from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
from litert_torch.quantize.pt2e_quantizer_utils import QuantizationConfig, get_fixed_qparams_qspec
from torch.fx import GraphModule, Node
from torchao.quantization.pt2e import move_exported_model_to_eval
from torchao.quantization.pt2e.export_utils import WrapperModule
from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e, prepare_qat_pt2e
from torchao.quantization.pt2e.quantizer import FixedQParamsQuantizationSpec, QuantizationAnnotation

log = logging.getLogger(__name__)

#: Input quantization: int8 value = pixel - 128 for pixels 0..255.
INPUT_SCALE = 1.0
INPUT_ZERO_POINT = -128

# Ops that only move data, between the model input and the first quantized op.
_LAYOUT_OPS = {torch.ops.aten.permute.default, torch.ops.aten.reshape.default, torch.ops.aten.view.default}


def quantization_config(is_qat: bool = False) -> QuantizationConfig:
    """Return the config: per-channel symmetric int8 weights, per-tensor affine int8 activations.

    With ``is_qat`` the observers are fake-quantize modules that track moving-average ranges
    while the model trains, and batch norm stays separate from its convolution until conversion.
    """
    return get_symmetric_quantization_config(is_per_channel=True, is_qat=is_qat)


class EmotionQuantizer(PT2EQuantizer):
    """PT2EQuantizer that also quantizes ``aten.softmax.int`` and fixes the input quantization."""

    def annotate(self, model: GraphModule) -> GraphModule:
        with _pattern_functions_as_modules():
            model = super().annotate(model)
        config = self.global_config
        for node in model.graph.nodes:
            if node.op == "call_function" and node.target == torch.ops.aten.softmax.int:
                self._annotate_softmax(node, config)
        self._fix_input_quantization(model)
        return model

    @staticmethod
    def _annotate_softmax(node: Node, config: QuantizationConfig) -> None:
        source = node.args[0]
        node.meta["quantization_annotation"] = QuantizationAnnotation(
            input_qspec_map={source: config.input_activation},
            output_qspec=get_fixed_qparams_qspec(config),
            _annotated=True,
        )

    @staticmethod
    def _fix_input_quantization(model: GraphModule) -> None:
        input_spec = FixedQParamsQuantizationSpec(
            dtype=torch.int8,
            scale=INPUT_SCALE,
            zero_point=INPUT_ZERO_POINT,
            quant_min=-128,
            quant_max=127,
            qscheme=torch.per_tensor_affine,
        )
        fixed = 0
        for placeholder in model.graph.find_nodes(op="placeholder"):
            for consumer, source in _consumers_through_layout_ops(placeholder):
                annotation = consumer.meta.get("quantization_annotation")
                if annotation is not None and source in annotation.input_qspec_map:
                    annotation.input_qspec_map[source] = input_spec
                    fixed += 1
        if fixed == 0:
            log.warning(
                "No quantized op reads the model input directly: the input keeps its calibrated range"
            )


@contextlib.contextmanager
def _pattern_functions_as_modules() -> Iterator[None]:
    """Let litert-torch 0.10's QAT conv + batch norm annotator run on torch 2.13.

    That annotator passes plain functions to torchao's ``_get_aten_graph_module_for_pattern``,
    which hands them to ``torch.export.export``. torch 2.13 only exports ``nn.Module``s and
    raises ``ValueError``, so the functions are wrapped in torchao's ``WrapperModule`` (what
    torchao's own QAT patterns use) for the duration of ``annotate``.

    NOTE: this replaces a private torchao function in the namespace where litert-torch 0.10
    imported it. A later litert-torch may wrap its patterns itself or import it differently.
    """
    original = pt2e_quantizer_utils._get_aten_graph_module_for_pattern

    def export_pattern(pattern, example_inputs, is_cuda=False, **kwargs):
        if not isinstance(pattern, torch.nn.Module):
            pattern = WrapperModule(pattern)
        return original(pattern, example_inputs, is_cuda, **kwargs)

    pt2e_quantizer_utils._get_aten_graph_module_for_pattern = export_pattern
    try:
        yield
    finally:
        pt2e_quantizer_utils._get_aten_graph_module_for_pattern = original


def _consumers_through_layout_ops(node: Node) -> Iterable[tuple[Node, Node]]:
    """Yield (consumer, the input it reads) for the first non-layout ops fed by ``node``."""
    for user in node.users:
        if user.op == "call_function" and user.target in _LAYOUT_OPS:
            yield from _consumers_through_layout_ops(user)
        else:
            yield user, node


def quantize_model(
    model: torch.nn.Module,
    sample_input: torch.Tensor,
    calibration_inputs: np.ndarray,
) -> tuple[GraphModule, EmotionQuantizer]:
    """Export ``model``, calibrate it on ``calibration_inputs`` and return the converted graph.

    ``calibration_inputs`` has the shape of ``sample_input`` without its batch dimension of 1,
    one entry per calibration crop. The graph is exported with batch size 1, so crops are fed
    one at a time. The quantizer is returned because ``litert_torch.convert`` needs it.
    """
    quantizer = EmotionQuantizer().set_global(quantization_config())
    exported = torch.export.export(model.eval(), (sample_input,)).module()
    prepared = prepare_pt2e(exported, quantizer)
    with torch.no_grad():
        for item in calibration_inputs:
            prepared(torch.from_numpy(np.asarray(item, dtype=np.float32))[None])
    converted = move_exported_model_to_eval(convert_pt2e(prepared, fold_quantize=False))
    # litert-torch warns about any module whose ``training`` flag is set, which an exported
    # GraphModule keeps even after its batch norm and dropout ops are in eval form.
    converted.training = False
    return converted, quantizer


def prepare_qat_model(model: torch.nn.Module, sample_input: torch.Tensor) -> tuple[GraphModule, EmotionQuantizer]:
    """Export ``model`` with a dynamic batch size and insert fake-quantize modules for QAT.

    The returned graph trains like a module on batches of any size. ``finish_qat_model`` turns
    it into the converted graph that ``litert_torch.convert`` takes, with the returned quantizer.
    """
    quantizer = EmotionQuantizer().set_global(quantization_config(is_qat=True))
    batch = torch.export.Dim("batch", min=1)
    exported = torch.export.export(model.train(), (sample_input,), dynamic_shapes=({0: batch},)).module()
    return prepare_qat_pt2e(exported, quantizer), quantizer


def finish_qat_model(prepared: GraphModule) -> GraphModule:
    """Convert a trained QAT graph: batch norm in eval form and folded, fake quantization made real."""
    move_exported_model_to_eval(prepared)
    converted = move_exported_model_to_eval(convert_pt2e(prepared, fold_quantize=False))
    converted.training = False
    return converted


def softmax_output_fake_quantizers(prepared: GraphModule) -> list[torch.nn.Module]:
    """Return the fake-quantize modules on the outputs of ``aten.softmax.int`` in a prepared graph.

    Their range is fixed (scale 1/256), so they have nothing to learn, and QAT switches them
    off while it trains: the loss then takes the log of float probabilities, whose gradient
    stays finite where a rounded probability would be 0.
    """
    modules = []
    for node in prepared.graph.nodes:
        if node.op == "call_function" and node.target == torch.ops.aten.softmax.int:
            for user in node.users:
                if user.op == "call_module":
                    modules.append(prepared.get_submodule(user.target))
    return modules
