"""The deployed size of a quantized model, counted exactly in bits (``model_bytes``), per layer
(what the mixed-precision knapsack of :mod:`fedquant.quant.mixed_precision` spends)."""

from __future__ import annotations

import math

from torch import nn

from .modules import LayerBits, QuantLayerMixin, quant_layers

Setting = tuple[int | None, int | None]
SCALE_BYTES = 4  # float32 scales
POW2_SCALE_BYTES = 1  # a power-of-two scale 2^k is stored as its exponent k (int8: a shift amount)


def scale_bytes(pow2: bool) -> int:
    """Bytes of one stored scale: float32, or the int8 exponent of a power of two."""
    return POW2_SCALE_BYTES if pow2 else SCALE_BYTES


def zero_point_bytes(bits: int) -> int:
    """A zero-point is stored in the tensor's own integer container: 1 byte up to 8 bits, else 2."""
    return 1 if bits <= 8 else 2


def layer_bits(layer: QuantLayerMixin, setting: Setting) -> int:
    """Bits of one quantized layer's weight and quantization parameters at ``setting`` (pinned
    layers at their pinned bits): ``numel(W) * b_w`` (32 in float), per weight scale (one per
    output channel, or one per tensor) a scale and a zero-point, and for a quantized input a
    scale and a zero-point. Its bias and other parameters are not included."""
    w, a = layer.effective_bits(*setting)
    wq, aq = layer.weight_quantizer, layer.input_quantizer
    bits = layer.weight.numel() * (w or 32)
    if w is not None:
        bits += wq.num_scales * 8 * (scale_bytes(wq.pow2) + zero_point_bytes(w))
    if a is not None:
        bits += 8 * (scale_bytes(aq.pow2) + zero_point_bytes(a))
    return bits


def other_bits(model: nn.Module) -> int:
    """Bits of every parameter that is not a quantized layer's weight (biases, norm affine), at 32."""
    weights = {id(layer.weight) for layer in quant_layers(model)}
    return sum(p.numel() * 32 for p in model.parameters() if id(p) not in weights)


def model_bytes(model: nn.Module, setting: Setting | LayerBits) -> int:
    """Deployed size: Conv/Linear weights at their bit-width (pinned layers at theirs), every
    other parameter (biases, norm affine) at 32 bits, and the quantization parameters: per
    quantized weight channel (one per tensor, with a per-tensor scheme) a scale and a zero-point,
    per quantized activation tensor a scale and a zero-point (:func:`zero_point_bytes`); a scale
    is a float32, or with power-of-two scales its int8 exponent (:func:`scale_bytes`). Statistics
    are excluded. ``setting`` is one setting for every layer or a :class:`LayerBits`:
    ``ceil((other_bits + sum_l layer_bits(l, s_l)) / 8)``."""
    layers = list(quant_layers(model))
    per_layer = setting if isinstance(setting, LayerBits) else [setting] * len(layers)
    return math.ceil((other_bits(model) + sum(layer_bits(m, s) for m, s in zip(layers, per_layer, strict=True))) / 8)
