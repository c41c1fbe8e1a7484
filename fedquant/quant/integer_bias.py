"""Biases as integer runtimes hold them: int32 on the grid ``s_x s_w`` (zero-point 0).

An integer Conv/Gemm accumulates ``sum q_x q_w`` in int32, so its bias is added in the same
units: for a layer whose input (scale ``s_x``, per tensor) and weight (scale ``s_w[c]`` per
output channel) are quantized, the deployed bias of channel ``c`` is::

    b_hat[c] = clamp(round(b[c] / g[c]), -2^31, 2^31 - 1) * g[c],   g[c] = s_x * s_w[c]  (float32)

with ``round`` half to even (ONNX QDQ: an int32 initializer through DequantizeLinear; onnxruntime's
default optimizer rounds a float bias the same way, ``WeightBiasQuantization``). A conv followed
only by a BatchNorm with ``a = gamma / sqrt(var + eps) > 0`` is deployed folded
(:mod:`fedquant.export.batchnorm`): ``conv(x_hat, q (s_w a)) + f`` with ``f = a b + c``,
``c = beta - mean a``, so the integer bias is ``f`` on the grid ``s_x (s_w a)``; the simulation
keeps the BatchNorm and moves the rounding into its shift: ``beta' = f_hat - a b + mean a``, so
that ``BN(conv + b) = a conv + f_hat``. Layers with a float input or float weights keep float
biases, as the runtime does.

With power-of-two scales (``pow2``) the grid ``g = s_x s_w`` is itself a power of two (the product
of two, exact in float32), so the bias is an int32 the accumulator adds after a shift. A BatchNorm
is then not folded: ``s_w a`` is no power of two, and shift-only hardware cannot take it into the
conv's scale; such a conv's bias goes on ``s_x s_w`` and its BatchNorm stays a float per-channel
affine after it (the export writes it so: :mod:`fedquant.export.batchnorm`).
"""

from __future__ import annotations

import torch
from torch import nn

from .grids import asymmetric_qparams
from .modules import QuantLayerMixin, quant_layers

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


def bias_grid(layer: QuantLayerMixin, fold: torch.Tensor | None = None) -> torch.Tensor | None:
    """``g = s_x * s_w`` per output channel in float32 (``s_w * fold`` when a BatchNorm scale
    ``fold`` is folded in), or None when the layer's input or weight is float."""
    wq, xq = layer.weight_quantizer, layer.input_quantizer
    if wq.bits is None or xq.bits is None:
        return None
    s_w = wq.scale_at(layer.weight.detach(), wq.bits).reshape(-1).float()
    s_w = s_w.expand(layer.weight.shape[0]) if s_w.numel() == 1 else s_w
    if fold is not None:
        s_w = s_w * fold.float()
    s_x, _ = asymmetric_qparams(xq.min_val.detach(), xq.max_val.detach(), xq.bits, xq.pow2)
    return s_x.float() * s_w


def on_grid(value: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """``clamp(round(value / grid), int32) * grid`` in float32 (the module docstring's ``b_hat``)."""
    q = torch.round(value.float() / grid).clamp_(INT32_MIN, INT32_MAX)
    return q * grid


def folds_batchnorm(layer: QuantLayerMixin) -> bool:
    """Whether a BatchNorm after ``layer`` is deployed folded into it: not with power-of-two
    scales (module docstring)."""
    return not layer.weight_quantizer.pow2


def folded_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """``(a, c)`` with ``BN(y) = a y + c`` per channel, in float64."""
    mean, var = bn.running_mean.double(), bn.running_var.double()
    gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(mean)
    beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(mean)
    a = gamma / torch.sqrt(var + bn.eps)
    return a, beta - mean * a


@torch.no_grad()
def quantize_biases(model: nn.Module, batchnorm_after: dict[str, str]) -> int:
    """Put every bias of ``model``'s quantized layers (at their current bit-widths and calibrated
    ranges) on its int32 grid, in place (module docstring); ``batchnorm_after`` maps a conv's name
    to the BatchNorm deployed folded into it (:func:`fedquant.quant.graph.batchnorm_after`).
    Returns the number of layers changed."""
    modules = dict(model.named_modules())
    names = {m: n for n, m in modules.items()}
    changed = 0
    for layer in quant_layers(model):
        bn = modules.get(batchnorm_after.get(names[layer], "")) if folds_batchnorm(layer) else None
        if isinstance(bn, nn.BatchNorm2d) and bn.affine and bn.running_mean is not None:
            a, c = folded_affine(bn)
            if torch.isfinite(a).all() and (a > 0).all():
                grid = bias_grid(layer, a.float())
                if grid is None:
                    continue
                own = layer.bias.detach().double() if layer.bias is not None else torch.zeros_like(a)
                f_hat = on_grid((a * own + c).float(), grid).double()
                bn.bias.copy_((f_hat - a * own + bn.running_mean.double() * a).to(bn.bias.dtype))
                changed += 1
                continue
        if layer.bias is not None and (grid := bias_grid(layer)) is not None:
            layer.bias.copy_(on_grid(layer.bias, grid).to(layer.bias.dtype))
            changed += 1
    return changed
