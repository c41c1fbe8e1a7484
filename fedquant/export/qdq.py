"""QuantizeLinear/DequantizeLinear nodes: a quantized layer's input and its integer weight.

**One quantized layer** (Conv or Gemm), with the encodings of :mod:`fedquant.export.encodings`
(``q = clamp(round(x / s) + z, qmin, qmax)``, ``x_hat = (q - z) s``)::

    x -> [Clip] -> QuantizeLinear(s, z) -> DequantizeLinear(s, z) -> Conv/Gemm -> y
    W_int (integer initializer) -> DequantizeLinear(s_w, axis=0) ------^   ^
    b_int (int32 initializer) -> DequantizeLinear(s_x s_w, axis=0) --------'

The weights are stored as integers (the QuantizeLinear of a constant weight is pre-computed),
the bias as int32 on the grid ``s_x s_w`` (with a folded BatchNorm, ``s_x s_w a``) when the
evaluation protocol models integer biases (``eval.integer_bias``, :mod:`fedquant.quant.integer_bias`),
else in float; norms that are not folded stay float, float layers (``fp``, or a quantizer at
``None``) get no QDQ at all. Pinned first/last layers carry their own (8-bit) encodings.

**Grids narrower than their container** (6-bit activations in UINT8): the float is clipped
before QuantizeLinear, ``Clip(x, (qmin - z) s, (qmax - z) s)`` (only the bound the container does
not already saturate: the top one for unsigned activations). That is exact: for
``x >= (qmax - z) s`` the clipped value divides back to ``qmax - z`` within a few ulps and rounds
there, which is the simulation's clamp; below it nothing changes. It keeps the standard
``Clip -> QuantizeLinear`` pattern (a clip on the integer tensor between Q and DQ would hide the
pair from runtimes' QDQ matchers). Weights of 4 bits or fewer are INT4 initializers (opset 21;
onnxruntime 1.32's CPU DequantizeLinear runs them per tensor and per channel), so they take half a
byte on disk; activations stay in UINT8 (why: :mod:`fedquant.export.encodings`).

**Rounding.** ONNX's QuantizeLinear rounds ``x / s`` half to even (onnxruntime divides); the
simulation multiplies by ``float32(1 / s)`` (``FakeQuantize``). The two differ only where ``x / s``
lies within an ulp of a half-integer, and then by one grid step; together with the float kernels'
different summation order (oneDNN vs MLAS) this is the whole difference between the exported and
the simulated model when the file is run as written: codes at rounding ties move by one step,
and codes downstream of them (measured on the digits CNN at W8A8: 8 of 345,600 codes on its 360
test images, 3 at ties; test accuracies agree; :func:`fedquant.export.check.compare` counts them
in every export). onnxruntime's *default* optimizer
rounds each *float* bias of a QDQ Conv/Gemm to int32 (see :mod:`fedquant.export.check`); an int32
bias is already what it would make, so the default and the exact session run the same model.
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper
from torch import nn

from ..quant.integer_bias import INT32_MAX, INT32_MIN, bias_grid
from ..quant.modules import QuantLayerMixin
from .builder import NodeBuilder, f32
from .encodings import Encoding, activation_encoding, container_range, weight_encoding

_NUMPY_TYPE = {"int8": np.int8, "uint8": np.uint8, "int16": np.int16, "uint16": np.uint16}
_PACKED_TYPE = {"int4": TensorProto.INT4, "uint4": TensorProto.UINT4}


def _packed_int4(name: str, values: np.ndarray, data_type: int) -> onnx.TensorProto:
    """An INT4/UINT4 tensor as ONNX stores it: two values a byte, the first in the low nibble
    (an odd count is padded with 0), so it needs neither ``ml_dtypes`` nor a recent onnx."""
    nibbles = (values.reshape(-1).astype(np.int64) & 0xF).astype(np.uint8)
    if nibbles.size % 2:
        nibbles = np.append(nibbles, np.uint8(0))
    packed = nibbles[0::2] | (nibbles[1::2] << 4)
    return helper.make_tensor(name, data_type, list(values.shape), packed.tobytes(), raw=True)


class QdqNodes(NodeBuilder):
    """The QDQ pair of a quantized layer's input and the integers + DequantizeLinear of its weight."""

    def int_const(self, name: str, values: np.ndarray, kind: str) -> str:
        """An integer initializer in container ``kind``; 4-bit ones packed two to a byte."""
        values = np.asarray(values)
        if kind in _PACKED_TYPE:
            self.initializers.append(_packed_int4(name, values, _PACKED_TYPE[kind]))
            return name
        return self.const(name, values.astype(_NUMPY_TYPE[kind]))

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
            w = f32(layer.weight.detach().contiguous().numpy())
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

    def bias(self, layer: nn.Module, qualname: str, bias: np.ndarray, fold: np.ndarray | None) -> str:
        """The layer's (folded) bias: int32 + DequantizeLinear on the grid of
        :func:`fedquant.quant.integer_bias.bias_grid` when integer biases are deployed and the
        layer's input and weight are quantized, else a float initializer."""
        grid = None
        if self.integer_bias and isinstance(layer, QuantLayerMixin):
            grid = bias_grid(layer, None if fold is None else torch.from_numpy(f32(fold)))
        if grid is None:
            return self.const(f"{qualname}.bias", f32(bias))
        g = grid.numpy()
        q = np.clip(np.rint(f32(bias) / g), INT32_MIN, INT32_MAX).astype(np.int32)
        self.params[f"{qualname}.bias"] = Encoding(32, True, g, np.zeros(g.shape, dtype=np.int64), INT32_MIN, INT32_MAX,
                                                   0, "int32")
        scale = self.const(f"{qualname}.bias.scale", g)
        return self.op("DequantizeLinear", [self.const(f"{qualname}.bias", q), scale], f"{qualname}.bias.dq", axis=0)
