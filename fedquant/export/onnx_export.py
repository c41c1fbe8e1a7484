"""A deployed fedquant model -> ONNX in QDQ format (QuantizeLinear/DequantizeLinear pairs).

**Why a hand-built graph.** ``torch.onnx.export`` in torch 2.13 defaults to the dynamo exporter,
which needs ``onnxscript`` (not a dependency), and neither exporter knows fedquant's autograd
Functions (``FakeQuantize``, LSQ): at best they would trace the fake quantization as float
arithmetic, not as QDQ pairs over integer weights. The three model families (MLP, CNN,
ResNet-20) use a dozen ops, so the graph is built directly: :mod:`torch.fx` traces the model's
dataflow with the quantized layers, norms, activations and pools as leaves, and each traced node
maps onto one or two ONNX ops (``onnx.helper``). An op outside that table raises ``ValueError``
naming it, so a new model fails loudly instead of exporting wrongly.

The graph is built by :class:`fedquant.export.ops.OpNodes`: quantized layers as QDQ pairs over
integer weights (:mod:`fedquant.export.qdq`, with the encodings of
:mod:`fedquant.export.encodings`), BatchNorm folded into the conv's dequantization scale where the
simulation allows it (:mod:`fedquant.export.batchnorm`), every other op as its ONNX counterpart
(:mod:`fedquant.export.ops`). The input is a float NCHW image (normalized), the output the logits.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx
import torch
from onnx import TensorProto, helper
from torch import nn

from ..quant.graph import trace
from ..quant.scheme import get_scheme
from .builder import INPUT, OUTPUT
from .encodings import encodings_document
from .ops import OpNodes

OPSET = 21  # INT4 DequantizeLinear, Pad with axes, GroupNormalization with per-channel scale and bias
IR_VERSION = 10  # the lowest IR version that carries opset 21 (and INT4)

@dataclass
class Exported:
    """An exported model: the ONNX graph and its encodings document."""

    model: onnx.ModelProto
    encodings: dict
    folded: list[str] = field(default_factory=list)  # BatchNorm layers folded into their conv (ONNX names)
    layers: dict[str, str] = field(default_factory=dict)  # ONNX layer name -> module name in the model

    def to_bytes(self) -> bytes:
        return self.model.SerializeToString()


def _rename_output(nodes: list[onnx.NodeProto], old: str) -> None:
    """Give the graph's output tensor the name :data:`OUTPUT`."""
    for node in nodes:
        for i, name in enumerate(node.output):
            if name == old:
                node.output[i] = OUTPUT
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = OUTPUT


@torch.no_grad()
def export_model(model: nn.Module, input_shape: tuple[int, ...], setting: str = "",
                 fold_batchnorm: bool = True, int4: bool = True, integer_bias: bool = False) -> Exported:
    """``model`` (quantized with :func:`fedquant.quant.quantize_model`, calibrated as deployed,
    e.g. by ``Evaluator.deploy``) as an ONNX QDQ graph over a float NCHW input ``[batch,
    *input_shape]`` (dynamic batch) giving logits ``[batch, classes]``; see the module docstring.
    ``integer_bias``: biases of quantized layers as int32 (pass the protocol's ``integer_bias``:
    ``Evaluator.deploy`` then put them on that grid already), else as they are, in float."""
    model = model.eval()
    classes = model(torch.zeros(1, *input_shape)).shape[-1]
    builder = OpNodes(model, fold_batchnorm, int4, integer_bias)
    output = builder.emit(trace(model))
    if output == INPUT:
        builder.nodes.append(helper.make_node("Identity", [INPUT], [OUTPUT], name=OUTPUT))
    else:
        _rename_output(builder.nodes, output)
    graph = helper.make_graph(
        builder.nodes, "fedquant",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["batch", *input_shape])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch", classes])],
        builder.initializers)
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                   producer_name="fedquant", ir_version=IR_VERSION,
                                   doc_string=f"fedquant model at {setting or 'its current setting'} (QDQ)")
    scheme = get_scheme(model)
    helper.set_model_props(onnx_model, {"setting": setting, "input": "normalized float image, NCHW",
                                        "batchnorm": "fold" if fold_batchnorm else "float", "scheme": scheme.label})
    onnx_model = onnx.shape_inference.infer_shapes(onnx_model, check_type=True, strict_mode=True)
    onnx.checker.check_model(onnx_model, full_check=True)
    encodings = encodings_document(setting, builder.activations, builder.params, builder.batchnorm, builder.layers,
                                   {"weight_granularity": scheme.weight_granularity, "scale": scheme.scale})
    folded = sorted(k for k, v in builder.batchnorm.items() if v.startswith("folded"))
    return Exported(onnx_model, encodings, folded, builder.layers)
