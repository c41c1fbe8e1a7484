"""The ONNX graph under construction (:mod:`fedquant.export.onnx_export`): the nodes,
initializers and encodings accumulated while walking the traced model, and the primitives every
node is built from (initializers, one op, the name of a node's output tensor).

The kinds of nodes are mixins over :class:`NodeBuilder`: :mod:`~fedquant.export.qdq` (quantized
inputs and integer weights), :mod:`~fedquant.export.batchnorm` (BatchNorm folded into a conv or
kept as a float node) and :mod:`~fedquant.export.ops` (one traced module or function -> ONNX ops).
"""

from __future__ import annotations

import numpy as np
import onnx
import torch.fx as fx
from onnx import helper, numpy_helper
from torch import nn

from .encodings import Encoding

INPUT, OUTPUT = "input", "logits"


def f32(array) -> np.ndarray:
    return np.asarray(array, dtype=np.float32)


class NodeBuilder:
    """Accumulates ONNX nodes, initializers and the encodings while walking the fx graph."""

    def __init__(self, model: nn.Module, fold_batchnorm: bool, int4: bool, integer_bias: bool = False) -> None:
        self.modules = dict(model.named_modules())
        self.fold_batchnorm, self.int4, self.integer_bias = fold_batchnorm, int4, integer_bias
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.values: dict[fx.Node, str] = {}
        self.activations: dict[str, tuple[Encoding, list[str]]] = {}
        self.dequantized: dict[str, str] = {}  # quantized tensor -> its DQ output
        self.params: dict[str, Encoding] = {}
        self.batchnorm: dict[str, str] = {}
        self.skip: set[fx.Node] = set()
        self.names: set[str] = {INPUT}

    # -- primitives ------------------------------------------------------------------------
    def const(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def op(self, op_type: str, inputs: list[str], output: str, **attrs) -> str:
        self.nodes.append(helper.make_node(op_type, inputs, [output], name=output, **attrs))
        return output

    def value(self, arg) -> str:
        if not isinstance(arg, fx.Node):
            raise ValueError(f"a constant operand {arg!r} is not supported by the ONNX export")
        return self.values[arg]

    def output_name(self, node: fx.Node) -> str:
        """A module's output tensor is named after the module (``blocks.0.bn1``), a function's
        after its fx node (``relu_3``); a module called twice falls back to the fx name."""
        name = node.target if node.op == "call_module" and node.target not in self.names else node.name
        while name in self.names:
            name += "_"
        self.names.add(name)
        return name
