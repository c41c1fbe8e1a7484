"""A deployed fedquant model -> ONNX in QDQ format (QuantizeLinear/DequantizeLinear pairs).

**Why a hand-built graph.** ``torch.onnx.export`` in torch 2.13 defaults to the dynamo exporter,
which needs ``onnxscript`` (not a dependency), and neither exporter knows fedquant's autograd
Functions (``FakeQuantize``, LSQ): at best they would trace the fake quantization as float
arithmetic, not as QDQ pairs over integer weights. The three model families (MLP, CNN,
ResNet-20) use a dozen ops, so the graph is built directly: :mod:`torch.fx` traces the model's
dataflow with the quantized layers, norms, activations and pools as leaves, and each traced node
maps onto one or two ONNX ops (``onnx.helper``). An op outside that table raises ``ValueError``
naming it, so a new model fails loudly instead of exporting wrongly.

**One quantized layer** (Conv or Gemm), with the encodings of :mod:`fedquant.deploy.encodings`
(``q = clamp(round(x / s) + z, qmin, qmax)``, ``x_hat = (q - z) s``)::

    x -> [Clip] -> QuantizeLinear(s, z) -> DequantizeLinear(s, z) -> Conv/Gemm -> y
    W_int (integer initializer) -> DequantizeLinear(s_w, axis=0) ------^   ^-- bias (float)

The weights are stored as integers (the QuantizeLinear of a constant weight is pre-computed),
biases and norms stay float (as in the simulation), float layers (``fp``, or a quantizer at
``None``) get no QDQ at all. Pinned first/last layers carry their own (8-bit) encodings.

**Grids narrower than their container** (6-bit activations in UINT8): the float is clipped
before QuantizeLinear, ``Clip(x, (qmin - z) s, (qmax - z) s)`` (only the bound the container does
not already saturate: the top one for unsigned activations). That is exact: for
``x >= (qmax - z) s`` the clipped value divides back to ``qmax - z`` within a few ulps and rounds
there, which is the simulation's clamp; below it nothing changes. It keeps the standard
``Clip -> QuantizeLinear`` pattern (a clip on the integer tensor between Q and DQ would hide the
pair from runtimes' QDQ matchers). Weights of 4 bits or fewer are INT4 initializers (opset 21;
onnxruntime 1.32's CPU DequantizeLinear runs them per tensor and per channel), so they take half a
byte on disk; activations stay in UINT8 (why: :mod:`fedquant.deploy.encodings`).

**Rounding.** ONNX's QuantizeLinear rounds ``x / s`` half to even (onnxruntime divides); the
simulation multiplies by ``float32(1 / s)`` (``FakeQuantize``). The two differ only where ``x / s``
lies within an ulp of a half-integer, and then by one grid step; together with the float kernels'
different summation order (oneDNN vs MLAS) this is the whole difference between the exported and
the simulated model when the file is run as written (measured on the digits CNN at w8a8: about
one integer code in 10^4 moves by one step; test accuracies agree). onnxruntime's *default* optimizer also rounds each float bias
of a QDQ Conv/Gemm to int32 (see :mod:`fedquant.deploy.check`).

**BatchNorm.** The simulation quantizes the *unfolded* conv weight and applies BatchNorm in float
to the conv's output: ``BN(conv(x_hat, q s)) = conv(x_hat, q s) * a + c`` per output channel, with
``a = gamma / sqrt(var + eps)`` and ``c = beta - mean * a``. Folding BN into the float weights
before quantizing (``W a``, then a new grid) would deploy other integers than the ones evaluated.
Because the weight scale is per output channel, a positive ``a`` moves into the *dequantization*
scale instead: ``conv(x_hat, q (s a)) + c``, the same integers with scale ``s a`` and bias ``c``:
exact in real arithmetic (float32 rounding differs by ulps), and the conv-with-bias form that QDQ
toolchains expect. A per-tensor weight scale becomes per channel there (the integers are
unchanged). A conv whose ``a`` has a zero or negative entry (no positive scale absorbs it) keeps
its BN as a float ``BatchNormalization`` node after the DQ'd conv, as does every BN with
``fold_batchnorm=False``; float convs fold BN into their weights (``W a``, ``c``) as usual.
GroupNorm depends on the data and stays a float ``GroupNormalization`` node (opset 21: one scale
and bias per channel). The encodings' ``batchnorm`` entry says what happened to each BN: a folded
conv's ``param_encodings`` hold the folded scale ``s a``, i.e. the scale of the stored integers.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import numpy as np
import onnx
import torch
import torch.fx as fx
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from ..quant.modules import QuantLayerMixin
from .encodings import (
    Encoding,
    activation_encoding,
    container_range,
    encodings_document,
    weight_encoding,
)

OPSET = 21  # INT4 DequantizeLinear, Pad with axes, GroupNormalization with per-channel scale and bias
IR_VERSION = 10  # the lowest IR version that carries opset 21 (and INT4)
INPUT, OUTPUT = "input", "logits"
INT64_MAX = 2**63 - 1
_NUMPY_TYPE = {"int8": np.int8, "uint8": np.uint8, "int16": np.int16, "uint16": np.uint16}
_PACKED_TYPE = {"int4": TensorProto.INT4, "uint4": TensorProto.UINT4}
_LEAVES = (QuantLayerMixin, nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.GroupNorm, nn.ReLU, nn.MaxPool2d,
           nn.Flatten, nn.AdaptiveAvgPool2d, nn.Identity, nn.Dropout)


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, _LEAVES) or super().is_leaf_module(m, qualname)


@dataclass
class Exported:
    """An exported model: the ONNX graph and its encodings document."""

    model: onnx.ModelProto
    encodings: dict
    folded: list[str] = field(default_factory=list)  # BatchNorm modules folded into their conv

    def to_bytes(self) -> bytes:
        return self.model.SerializeToString()


def _f32(array) -> np.ndarray:
    return np.asarray(array, dtype=np.float32)


def _bn_affine(bn: nn.BatchNorm2d) -> tuple[np.ndarray, np.ndarray]:
    """``(a, c)`` with ``BN(y) = y * a + c`` per channel (computed in float64, stored float32)."""
    if bn.running_mean is None:
        raise ValueError(f"{bn}: BatchNorm without running statistics cannot be exported")
    mean, var = bn.running_mean.double(), bn.running_var.double()
    gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(mean)
    beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(mean)
    a = gamma / torch.sqrt(var + bn.eps)
    return _f32(a.numpy()), _f32((beta - mean * a).numpy())


def _packed_int4(name: str, values: np.ndarray, data_type: int) -> onnx.TensorProto:
    """An INT4/UINT4 tensor as ONNX stores it: two values a byte, the first in the low nibble
    (an odd count is padded with 0), so it needs neither ``ml_dtypes`` nor a recent onnx."""
    nibbles = (values.reshape(-1).astype(np.int64) & 0xF).astype(np.uint8)
    if nibbles.size % 2:
        nibbles = np.append(nibbles, np.uint8(0))
    packed = nibbles[0::2] | (nibbles[1::2] << 4)
    return helper.make_tensor(name, data_type, list(values.shape), packed.tobytes(), raw=True)


class _Builder:
    """Accumulates ONNX nodes, initializers and the encodings while walking the fx graph."""

    def __init__(self, model: nn.Module, fold_batchnorm: bool, int4: bool) -> None:
        self.modules = dict(model.named_modules())
        self.fold_batchnorm, self.int4 = fold_batchnorm, int4
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

    def int_const(self, name: str, values: np.ndarray, kind: str) -> str:
        """An integer initializer in container ``kind``; 4-bit ones packed two to a byte."""
        values = np.asarray(values)
        if kind in _PACKED_TYPE:
            self.initializers.append(_packed_int4(name, values, _PACKED_TYPE[kind]))
            return name
        return self.const(name, values.astype(_NUMPY_TYPE[kind]))

    def op(self, op_type: str, inputs: list[str], output: str, **attrs) -> str:
        self.nodes.append(helper.make_node(op_type, inputs, [output], name=output, **attrs))
        return output

    def value(self, arg) -> str:
        if not isinstance(arg, fx.Node):
            raise ValueError(f"a constant operand {arg!r} is not supported by the ONNX export")
        return self.values[arg]

    # -- quantization ----------------------------------------------------------------------
    def quantized_input(self, x: str, layer: QuantLayerMixin, qualname: str) -> str:
        """``x`` through Clip (if the grid is narrower than its container), Q and DQ."""
        enc = activation_encoding(layer.input_quantizer)
        if enc is None:
            return x
        if x in self.activations:  # a tensor feeding two quantized layers: one QDQ if the grids agree
            known, consumers = self.activations[x]
            if known.to_json() != enc.to_json():
                raise ValueError(f"tensor {x} is quantized with two different grids: not supported")
            consumers.append(qualname)
            return self.dequantized[x]
        s, z = enc.scale[0], int(enc.zero_point[0])
        prefix = f"{qualname}.input_quantizer"
        scale = self.const(f"{prefix}.scale", s)
        zero = self.int_const(f"{prefix}.zero_point", np.array(z), enc.container)
        src = x
        if enc.clipped:
            lo, hi = container_range(enc.container)
            bounds = [self.const(f"{prefix}.clip_min", np.float32(enc.qmin - z) * s) if enc.qmin > lo else "",
                      self.const(f"{prefix}.clip_max", np.float32(enc.qmax - z) * s) if enc.qmax < hi else ""]
            src = self.op("Clip", [x, *bounds], f"{prefix}.clip")
        q = self.op("QuantizeLinear", [src, scale, zero], f"{prefix}.q")
        self.dequantized[x] = self.op("DequantizeLinear", [q, scale, zero], f"{prefix}.dq")
        self.activations[x] = (enc, [qualname])
        return self.dequantized[x]

    def weight(self, layer: nn.Module, qualname: str, fold: np.ndarray | None) -> str:
        """The layer's weight: integers + DequantizeLinear, or float; ``fold`` multiplies each
        output channel (into the DQ scale for integer weights)."""
        shape = (-1,) + (1,) * (layer.weight.dim() - 1)
        found = weight_encoding(layer, self.int4) if isinstance(layer, QuantLayerMixin) else None
        if found is None:
            w = _f32(layer.weight.detach().contiguous().numpy())
            return self.const(f"{qualname}.weight", w if fold is None else w * fold.reshape(shape))
        q, enc = found
        if fold is not None:
            enc = enc.with_scale(np.broadcast_to(enc.scale, fold.shape) * fold, axis=0)
        w_int = self.int_const(f"{qualname}.weight", q, enc.container)
        per_channel = enc.axis is not None
        scale = self.const(f"{qualname}.weight.scale", enc.scale if per_channel else enc.scale[0])
        self.params[f"{qualname}.weight"] = enc
        return self.op("DequantizeLinear", [w_int, scale], f"{qualname}.weight.dq",
                       **({"axis": 0} if per_channel else {}))

    # -- modules ---------------------------------------------------------------------------
    def foldable_batchnorm(self, node: fx.Node, layer: nn.Module) -> tuple[fx.Node, np.ndarray, np.ndarray] | None:
        """The BatchNorm right after conv ``node`` (its only user) and its ``(a, c)``, when it
        can be folded (module docstring); else None."""
        if not (self.fold_batchnorm and isinstance(layer, nn.Conv2d) and len(node.users) == 1):
            return None
        (user,) = node.users
        bn = self.modules.get(user.target) if user.op == "call_module" else None
        if not isinstance(bn, nn.BatchNorm2d):
            return None
        a, c = _bn_affine(bn)
        quantized = isinstance(layer, QuantLayerMixin) and layer.weight_quantizer.bits is not None
        if quantized and not (np.isfinite(a).all() and (a > 0).all()):
            self.batchnorm[user.target] = f"kept as float BatchNormalization after {node.target} (a scale <= 0)"
            return None
        return user, a, c

    def layer(self, node: fx.Node, layer: nn.Module) -> str:
        qualname = node.target
        x = self.value(node.args[0])
        if isinstance(layer, QuantLayerMixin):
            x = self.quantized_input(x, layer, qualname)
        folded = self.foldable_batchnorm(node, layer)
        a, c = (folded[1], folded[2]) if folded else (None, None)
        w = self.weight(layer, qualname, a)
        bias = None if layer.bias is None else _f32(layer.bias.detach().numpy())
        if folded:
            bias = c if bias is None else bias * a + c
            self.skip.add(folded[0])
            self.batchnorm[folded[0].target] = f"folded into {qualname}: weight scale * a, bias c"
        inputs = [x, w] + ([self.const(f"{qualname}.bias", bias)] if bias is not None else [])
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

    def output_name(self, node: fx.Node) -> str:
        """A module's output tensor is named after the module (``blocks.0.bn1``), a function's
        after its fx node (``relu_3``); a module called twice falls back to the fx name."""
        name = node.target if node.op == "call_module" and node.target not in self.names else node.name
        while name in self.names:
            name += "_"
        self.names.add(name)
        return name

    def module(self, node: fx.Node) -> str:
        m = self.modules[node.target]
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            return self.layer(node, m)
        x = self.value(node.args[0])
        name = self.output_name(node)
        if isinstance(m, nn.BatchNorm2d):
            self.batchnorm.setdefault(node.target, "kept as float BatchNormalization")
            return self._batchnorm(node.target, m, x, name)
        if isinstance(m, nn.GroupNorm):
            gamma = m.weight.detach().numpy() if m.affine else np.ones(m.num_channels)
            beta = m.bias.detach().numpy() if m.affine else np.zeros(m.num_channels)
            return self.op("GroupNormalization", [x, self.const(f"{node.target}.weight", _f32(gamma)),
                                                  self.const(f"{node.target}.bias", _f32(beta))],
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

    def _batchnorm(self, qualname: str, m: nn.BatchNorm2d, x: str, name: str) -> str:
        if m.running_mean is None:
            raise ValueError(f"{qualname}: BatchNorm without running statistics cannot be exported")
        gamma = m.weight.detach().numpy() if m.weight is not None else np.ones(m.num_features)
        beta = m.bias.detach().numpy() if m.bias is not None else np.zeros(m.num_features)
        inputs = [x] + [self.const(f"{qualname}.{k}", _f32(v)) for k, v in (
            ("weight", gamma), ("bias", beta), ("running_mean", m.running_mean.numpy()),
            ("running_var", m.running_var.numpy()))]
        return self.op("BatchNormalization", inputs, name, epsilon=float(m.eps))

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
        """Emit every node; returns the name of the graph's output tensor."""
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
                 fold_batchnorm: bool = True, int4: bool = True) -> Exported:
    """``model`` (quantized with :func:`fedquant.quant.quantize_model`, calibrated as deployed,
    e.g. by ``Evaluator.deploy``) as an ONNX QDQ graph over a float NCHW input ``[batch,
    *input_shape]`` (dynamic batch) giving logits ``[batch, classes]``; see the module docstring."""
    model = model.eval()
    classes = model(torch.zeros(1, *input_shape)).shape[-1]
    builder = _Builder(model, fold_batchnorm, int4)
    output = builder.emit(_Tracer().trace(model))
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
    helper.set_model_props(onnx_model, {"setting": setting, "input": "normalized float image, NCHW",
                                        "batchnorm": "fold" if fold_batchnorm else "float"})
    onnx_model = onnx.shape_inference.infer_shapes(onnx_model, check_type=True, strict_mode=True)
    onnx.checker.check_model(onnx_model, full_check=True)
    encodings = encodings_document(setting, builder.activations, builder.params, builder.batchnorm)
    folded = sorted(k for k, v in builder.batchnorm.items() if v.startswith("folded"))
    return Exported(onnx_model, encodings, folded)
