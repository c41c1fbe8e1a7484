"""One traced node -> ONNX ops: quantized and float Conv/Gemm layers, norms, activations, pools,
flatten, slicing, padding and residual adds (the dozen ops of the MLP, CNN and ResNet-20). An op
outside this table raises ``ValueError`` naming it, so a new model fails loudly instead of
exporting wrongly."""

from __future__ import annotations

import operator

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from ..quant.modules import QuantLayerMixin
from .batchnorm import BatchNormNodes
from .builder import INPUT, f32
from .qdq import QdqNodes

INT64_MAX = 2**63 - 1


class OpNodes(QdqNodes, BatchNormNodes):
    """The whole builder: walks the fx graph (:meth:`emit`) and emits each node's ONNX ops."""

    # -- modules ---------------------------------------------------------------------------
    def layer(self, node: fx.Node, layer: nn.Module) -> str:
        qualname = node.target
        x = self.value(node.args[0])
        if isinstance(layer, QuantLayerMixin):
            x = self.quantized_input(x, layer, qualname)
        folded = self.foldable_batchnorm(node, layer)
        a, c = (folded[1], folded[2]) if folded else (None, None)
        w = self.weight(layer, qualname, a)
        bias = None if layer.bias is None else f32(layer.bias.detach().numpy())
        if folded:
            bias = c if bias is None else bias * a + c
            self.skip.add(folded[0])
            self.batchnorm[folded[0].target] = f"folded into {qualname}: weight scale * a, bias c"
        inputs = [x, w] + ([self.bias(layer, qualname, bias, a)] if bias is not None else [])
        out = self.output_name(folded[0] if folded else node)
        if folded:
            self.values[folded[0]] = out
        if isinstance(layer, nn.Linear):
            return self.op("Gemm", inputs, out, transB=1)
        if layer.padding_mode != "zeros" or isinstance(layer.padding, str):
            raise ValueError(f"{qualname}: padding {layer.padding!r} ({layer.padding_mode}) is not supported")
        ph, pw = layer.padding
        return self.op("Conv", inputs, out, kernel_shape=list(layer.kernel_size), strides=list(layer.stride),
                       pads=[ph, pw, ph, pw], dilations=list(layer.dilation), group=layer.groups)

    def module(self, node: fx.Node) -> str:
        m = self.modules[node.target]
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            return self.layer(node, m)
        x = self.value(node.args[0])
        name = self.output_name(node)
        if isinstance(m, nn.BatchNorm2d):
            self.batchnorm.setdefault(node.target, "kept as float BatchNormalization")
            return self.float_batchnorm(node.target, m, x, name)
        if isinstance(m, nn.GroupNorm):
            gamma = m.weight.detach().numpy() if m.affine else np.ones(m.num_channels)
            beta = m.bias.detach().numpy() if m.affine else np.zeros(m.num_channels)
            return self.op("GroupNormalization", [x, self.const(f"{node.target}.weight", f32(gamma)),
                                                  self.const(f"{node.target}.bias", f32(beta))],
                           name, epsilon=float(m.eps), num_groups=m.num_groups)
        if isinstance(m, nn.ReLU):
            return self.op("Relu", [x], name)
        if isinstance(m, nn.MaxPool2d):
            return self._maxpool(m, x, name)
        if isinstance(m, nn.Flatten):
            if m.start_dim != 1 or m.end_dim != -1:
                raise ValueError(f"{node.target}: Flatten({m.start_dim}, {m.end_dim}) is not supported")
            return self.op("Flatten", [x], name, axis=1)
        if isinstance(m, nn.AdaptiveAvgPool2d):
            return self._global_pool(m.output_size, x, name)
        if isinstance(m, (nn.Identity, nn.Dropout)):
            return x
        raise ValueError(f"{node.target}: module {type(m).__name__} is not supported by the ONNX export")

    def _maxpool(self, m: nn.MaxPool2d, x: str, name: str) -> str:
        if m.return_indices:
            raise ValueError("MaxPool2d(return_indices=True) is not supported by the ONNX export")
        pair = lambda v: list(v) if isinstance(v, (tuple, list)) else [v, v]  # noqa: E731
        k, p = pair(m.kernel_size), pair(m.padding)
        return self.op("MaxPool", [x], name, kernel_shape=k, strides=pair(m.stride or m.kernel_size),
                       pads=p + p, dilations=pair(m.dilation), ceil_mode=int(m.ceil_mode))

    def _global_pool(self, size, x: str, name: str) -> str:
        if size not in (1, (1, 1), [1, 1]):
            raise ValueError(f"adaptive average pooling to {size!r} is not supported (only to 1)")
        return self.op("GlobalAveragePool", [x], name)

    # -- functions -------------------------------------------------------------------------
    def function(self, node: fx.Node) -> str:
        f, args, kwargs, name = node.target, node.args, node.kwargs, self.output_name(node)
        if f in (F.relu, torch.relu):
            return self.op("Relu", [self.value(args[0])], name)
        if f in (operator.add, torch.add) and "alpha" not in kwargs:
            return self.op("Add", [self.value(args[0]), self.value(args[1])], name)
        if f is operator.getitem:
            return self._slice(self.value(args[0]), args[1], name)
        if f is F.pad:
            return self._pad(node, name)
        if f is F.adaptive_avg_pool2d:
            return self._global_pool(args[1] if len(args) > 1 else kwargs["output_size"], self.value(args[0]), name)
        if f is torch.flatten:
            start = args[1] if len(args) > 1 else kwargs.get("start_dim", 0)
            end = args[2] if len(args) > 2 else kwargs.get("end_dim", -1)
            if start != 1 or end != -1:
                raise ValueError(f"torch.flatten(x, {start}, {end}) is not supported (only start_dim=1)")
            return self.op("Flatten", [self.value(args[0])], name, axis=1)
        raise ValueError(f"function {getattr(f, '__name__', f)!r} is not supported by the ONNX export")

    def _slice(self, x: str, index, name: str) -> str:
        index = index if isinstance(index, tuple) else (index,)
        starts, ends, axes, steps = [], [], [], []
        for axis, item in enumerate(index):
            if not isinstance(item, slice) or (item.step is not None and item.step < 1):
                raise ValueError(f"indexing with {item!r} is not supported (only slices with positive steps)")
            if item == slice(None):
                continue
            starts.append(item.start or 0)
            ends.append(INT64_MAX if item.stop is None else item.stop)
            axes.append(axis)
            steps.append(item.step or 1)
        consts = [self.const(f"{name}.{k}", np.array(v, dtype=np.int64))
                  for k, v in (("starts", starts), ("ends", ends), ("axes", axes), ("steps", steps))]
        return self.op("Slice", [x, *consts], name)

    def _pad(self, node: fx.Node, name: str) -> str:
        args, kwargs = node.args, node.kwargs
        pad = args[1] if len(args) > 1 else kwargs["pad"]
        mode = args[2] if len(args) > 2 else kwargs.get("mode", "constant")
        value = args[3] if len(args) > 3 else kwargs.get("value")
        if mode != "constant" or value not in (None, 0, 0.0):
            raise ValueError(f"F.pad(mode={mode!r}, value={value!r}) is not supported (only zero padding)")
        dims = len(pad) // 2  # torch pads the last dims first: (last_begin, last_end, ...)
        begins, ends = list(pad[0::2]), list(pad[1::2])
        pads = self.const(f"{name}.pads", np.array(begins + ends, dtype=np.int64))
        axes = self.const(f"{name}.axes", np.array([-1 - i for i in range(dims)], dtype=np.int64))
        return self.op("Pad", [self.value(args[0]), pads, "", axes], name, mode="constant")

    # -- the whole graph -------------------------------------------------------------------
    def emit(self, graph: fx.Graph) -> str:
        """Emit every node (call_module nodes renamed to their layers' ONNX names first:
        :meth:`~fedquant.export.builder.NodeBuilder.rename`); returns the graph's output tensor."""
        self.rename(graph)
        for node in graph.nodes:
            if node in self.skip:
                continue
            if node.op == "placeholder":
                if self.values:
                    raise ValueError("models with more than one input are not supported")
                self.values[node] = INPUT
            elif node.op == "call_module":
                self.values[node] = self.module(node)
            elif node.op == "call_function":
                self.values[node] = self.function(node)
            elif node.op == "output":
                return self.value(node.args[0])
            else:
                raise ValueError(f"{node.op} {node.target!r} is not supported by the ONNX export")
        raise ValueError("the traced graph has no output")
