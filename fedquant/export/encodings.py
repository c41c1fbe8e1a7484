"""A deployed model's quantizers as integer encodings, and the encodings JSON (AIMET's spirit).

The fake quantizers of :mod:`fedquant.quant.quantizers`, restated on integers::

    q = clamp(round(x / s) + z, qmin, qmax),    x_hat = (q - z) * s

* weights: symmetric and signed, ``z = 0``, ``s = clip * max|w| / (2^(b-1) - 1)`` per output
  channel (axis 0) or per tensor; grid ``[-(2^(b-1) - 1), 2^(b-1) - 1]`` (narrow) or
  ``[-2^(b-1), 2^(b-1) - 1]`` (full);
* activations (the input of every quantized Conv/Linear): asymmetric and unsigned, per tensor,
  grid ``[0, 2^b - 1]`` over the range ``[lo, hi] = [min(lo, 0), max(hi, 0)]``,
  ``s = (hi - lo) / (2^b - 1)``, ``z = clamp(round(-lo / s), 0, 2^b - 1)``;
* with power-of-two scales (the scheme's ``scale: pow2``) both scales are ``2^ceil(log2 s)`` of
  the above (:func:`fedquant.quant.grids.pow2_scale`), exact in float32; the document's
  ``scheme`` says which (and the weight granularity).

The integers are read back from what the simulation computes, never recomputed by another
formula: a weight's integers are ``round(w_hat / s)`` of the fake-quantized weight ``w_hat`` the
evaluator uses, checked to give ``q * s == w_hat`` bit for bit; an activation's scale and
zero-point are :func:`fedquant.quant.grids.host_asymmetric_qparams` of its frozen range, the
float32 values the simulation multiplies by.

Containers: a weight grid of ``b`` bits is stored in the smallest ONNX integer type that holds
it, INT4 (opset 21) for ``b <= 4``, INT8 up to 8 bits, INT16 above (weights are stored already on
their grid: no clip needed). Activations use UINT8 up to 8 bits (UINT16 above), with a clip that
enforces a narrower grid (see :mod:`fedquant.export.onnx_export`), never UINT4: onnxruntime 1.32
runs QuantizeLinear/DequantizeLinear on UINT4, but two of its default graph optimizations fail on
a UINT4 activation: ``ClipQuantFusion`` rejects its zero-point after a Clip (session creation
fails: "Unexpected data type for QuantizeLinear input y_zero_point of 21") and QDQ propagation
moves the QuantizeLinear above a MaxPool, which has no UINT4 kernel ("Type 'tensor(uint4)' of
input parameter ... of operator (MaxPool) ... is invalid"). ``int4=False`` stores 2..4-bit
weights in INT8.

The JSON follows AIMET's encodings files: ``activation_encodings`` keyed by the ONNX tensor that is
quantized, ``param_encodings`` keyed by the weight initializer (names in the written file, e.g.
``fc3.weight``: :mod:`fedquant.export.builder`), each entry with ``bitwidth``,
``dtype`` ("int"), ``is_symmetric``, per-channel lists ``scale`` and ``offset`` and the channel
axis; AIMET's sign convention ``offset = -z``, so ``x_hat = (q + offset) * scale`` and ``min`` /
``max`` are the grid's ends in float, ``(qmin + offset) * scale`` and ``(qmax + offset) * scale``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch

from ..quant.grids import host_asymmetric_qparams, weight_grid
from ..quant.modules import QuantLayerMixin
from ..quant.quantizers import ActivationQuantizer

FORMAT = "fedquant-encodings/1"
FORMULA = "q = clamp(round(x / scale) - offset, qmin, qmax); x_hat = (q + offset) * scale"


def container(bits: int, signed: bool, int4: bool = True) -> str:
    """The smallest ONNX integer type holding a ``bits``-bit grid: ``int4``, ``uint8``, ..."""
    for width in (4, 8, 16) if int4 else (8, 16):
        if bits <= width:
            return f"{'' if signed else 'u'}int{width}"
    raise ValueError(f"bits={bits} is out of range: allowed is at most 16")


def container_range(name: str) -> tuple[int, int]:
    """Integer range of an ONNX container type name (``int4`` -> (-8, 7))."""
    width = int(name.lstrip("uint"))
    return (0, 2**width - 1) if name.startswith("u") else (-(2 ** (width - 1)), 2 ** (width - 1) - 1)


@dataclass(frozen=True)
class Encoding:
    """One quantized tensor: ``x_hat = (q - zero_point) * scale`` with ``q`` in ``[qmin, qmax]``.

    ``scale`` (float32) and ``zero_point`` (int64) have one entry per channel along ``axis``, or
    one entry (``axis`` None) for a per-tensor grid."""

    bits: int
    symmetric: bool
    scale: np.ndarray
    zero_point: np.ndarray
    qmin: int
    qmax: int
    axis: int | None
    container: str

    @property
    def clipped(self) -> bool:
        """True when the grid is narrower than its container, so a clip must enforce it."""
        lo, hi = container_range(self.container)
        return self.qmin > lo or self.qmax < hi

    def with_scale(self, scale: np.ndarray, axis: int | None) -> Encoding:
        """The same integers on another scale (a per-channel factor folded in, e.g. BatchNorm)."""
        scale = np.asarray(scale, dtype=np.float32)
        return replace(self, scale=scale, axis=axis, zero_point=np.zeros(scale.shape, dtype=np.int64))

    def to_json(self) -> dict:
        offset = (-self.zero_point).astype(np.int64)
        return {"bitwidth": self.bits, "dtype": "int", "is_symmetric": self.symmetric,
                "scale": [float(s) for s in self.scale], "offset": [int(o) for o in offset],
                "channel_axis": self.axis, "qmin": self.qmin, "qmax": self.qmax,
                "min": [float(np.float32(self.qmin + o) * s) for o, s in zip(offset, self.scale, strict=True)],
                "max": [float(np.float32(self.qmax + o) * s) for o, s in zip(offset, self.scale, strict=True)],
                "container": self.container}


def activation_encoding(quantizer: ActivationQuantizer) -> Encoding | None:
    """The frozen input grid of a quantized layer (None when it runs in float)."""
    bits = quantizer.bits
    if bits is None:
        return None
    lo, hi = float(quantizer.min_val), float(quantizer.max_val)
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        raise ValueError(f"activation range [{lo}, {hi}] is not calibrated: deploy the model first")
    scale, zero_point = host_asymmetric_qparams(lo, hi, bits, quantizer.pow2)
    return Encoding(bits, False, np.array([scale], dtype=np.float32), np.array([int(zero_point)], dtype=np.int64),
                    0, 2**bits - 1, None, container(bits, signed=False, int4=False))


@torch.no_grad()
def weight_encoding(layer: QuantLayerMixin, int4: bool = True) -> tuple[np.ndarray, Encoding] | None:
    """``(q, encoding)``: the layer's deployed weight as integers on its grid (None in float).

    ``q = round(w_hat / s)`` of the evaluator's own fake-quantized weight ``w_hat`` (whatever
    rounding produced it: nearest, AdaRound, LSQ); ``q * s == w_hat`` is checked bit for bit."""
    wq = layer.weight_quantizer
    bits = wq.bits
    if bits is None:
        return None
    w = layer.weight.detach()
    w_hat = wq(w).float()
    scale = wq.scale(w).float().reshape(-1)
    s = scale.reshape((-1,) + (1,) * (w.dim() - 1))
    q = torch.round(w_hat / s)
    qmin, qmax = weight_grid(bits, wq.narrow_range)
    if not torch.equal(q * s, w_hat) or q.min() < qmin or q.max() > qmax:
        raise RuntimeError(f"the fake-quantized weight is not on its {bits}-bit grid: cannot store it as integers")
    per_channel = wq.granularity == "per_channel"
    enc = Encoding(bits, True, scale.numpy().astype(np.float32), np.zeros(scale.numel(), dtype=np.int64),
                   qmin, qmax, 0 if per_channel else None, container(bits, signed=True, int4=int4))
    return q.contiguous().numpy().astype(np.int64), enc


def encodings_document(setting: str, activations: dict[str, tuple[Encoding, list[str]]],
                       params: dict[str, Encoding], batchnorm: dict[str, str],
                       modules: dict[str, str] | None = None, scheme: dict | None = None) -> dict:
    """The ``<setting>.encodings.json`` content: the grids of every quantized tensor of the ONNX
    graph, keyed by its tensor name there (``activation_encodings``: the tensor a QuantizeLinear
    reads, with the layers that consume it; ``param_encodings``: the initializer), the fate of
    every BatchNorm, ``modules``: each layer's ONNX name -> its module name in the model (the
    prefix of its ``state_dict`` keys), and the quantizer ``scheme`` (weight granularity, scale)."""
    return {"version": FORMAT, "setting": setting, "formula": FORMULA, **({"scheme": scheme} if scheme else {}),
            "activation_encodings": {name: enc.to_json() | {"consumers": consumers}
                                     for name, (enc, consumers) in activations.items()},
            "param_encodings": {name: enc.to_json() for name, enc in params.items()},
            "batchnorm": batchnorm, "modules": dict(modules or {})}
