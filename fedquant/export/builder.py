"""The ONNX graph under construction (:mod:`fedquant.export.onnx_export`): the nodes,
initializers and encodings accumulated while walking the traced model, and the primitives every
node is built from (initializers, one op, the name of a node's output tensor).

The kinds of nodes are mixins over :class:`NodeBuilder`: :mod:`~fedquant.export.qdq` (quantized
inputs and integer weights), :mod:`~fedquant.export.batchnorm` (BatchNorm folded into a conv or
kept as a float node) and :mod:`~fedquant.export.ops` (one traced module or function -> ONNX ops).

**Names.** Every tensor and initializer is named after the layer it belongs to
(``conv0.weight``, ``blocks.0.conv1.input_quantizer.q``), and the encodings are keyed by those
names. A layer is named by its module name, except that an ``nn.Sequential`` index (the MLP's and
CNN's layers are ``0``, ``1``, ...) becomes its kind plus the index (:func:`layer_names`:
``conv0``, ``bn1``, ``fc9``), so the name says what the layer is and still points at its
``state_dict`` entries (``fc9.weight`` is ``9.weight``).
"""

from __future__ import annotations

import numpy as np
import onnx
import torch.fx as fx
from onnx import helper, numpy_helper
from torch import nn

from ..quant.graph import LEAVES
from .encodings import Encoding

INPUT, OUTPUT = "input", "logits"


# A layer's kind, the name an nn.Sequential index gets in front of it (first match wins).
KINDS: tuple[tuple[type[nn.Module], str], ...] = (
    (nn.Conv2d, "conv"), (nn.Linear, "fc"), (nn.BatchNorm2d, "bn"), (nn.GroupNorm, "gn"), (nn.ReLU, "relu"),
    (nn.MaxPool2d, "maxpool"), (nn.AdaptiveAvgPool2d, "avgpool"), (nn.Flatten, "flatten"),
    (nn.Dropout, "dropout"), (nn.Identity, "identity"))


def f32(array) -> np.ndarray:
    return np.asarray(array, dtype=np.float32)


def kind(module: nn.Module) -> str:
    """``conv``, ``fc``, ``bn``, ... (:data:`KINDS`), else the class name in lower case."""
    return next((k for t, k in KINDS if isinstance(module, t)), type(module).__name__.lower())


def layer_names(model: nn.Module) -> dict[str, str]:
    """Module name -> its name in the ONNX graph: the module name, with a traced layer's last
    part, when it is an ``nn.Sequential`` index ``i``, replaced by ``kind + i`` (``3`` -> ``fc3``,
    ``features.0`` -> ``features.conv0``); a clash with another module's name gets a ``_``."""
    taken = {name for name, _ in model.named_modules()}
    names = {}
    for name, module in model.named_modules():
        head, dot, last = name.rpartition(".")
        if not (last.isdigit() and isinstance(module, LEAVES)):
            names[name] = name
            continue
        new = f"{head}{dot}{kind(module)}{last}"
        while new in taken:
            new += "_"
        taken.add(new)
        names[name] = new
    return names


class NodeBuilder:
    """Accumulates ONNX nodes, initializers and the encodings while walking the fx graph."""

    def __init__(self, model: nn.Module, fold_batchnorm: bool, int4: bool, integer_bias: bool = False) -> None:
        self.module_names = {onnx: name for name, onnx in layer_names(model).items()}  # ONNX name -> module name
        self.modules = {onnx: model.get_submodule(name) for onnx, name in self.module_names.items()}
        self.layers: dict[str, str] = {}  # the traced layers: ONNX name -> module name
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

    def rename(self, graph: fx.Graph) -> None:
        """Point every call_module node at its layer's ONNX name (:func:`layer_names`), the
        key of :attr:`modules`, so each node's tensors and encodings carry that name."""
        onnx_names = {name: onnx for onnx, name in self.module_names.items()}
        for node in graph.nodes:
            if node.op == "call_module":
                node.target = onnx_names[node.target]
                self.layers[node.target] = self.module_names[node.target]

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
