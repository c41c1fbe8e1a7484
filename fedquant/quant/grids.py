"""Integer grids and the formulas for their scale and zero-point (uniform affine quantization).

Math (arXiv 2106.08295): a tensor ``x`` is quantized on the integer grid ``[qmin, qmax]`` with a
scale ``s`` and an integer zero-point ``z``::

    q = clamp(round(x / s) + z, qmin, qmax),   x_hat = (q - z) * s

- **weights**: symmetric (``z = 0``) signed grid, narrow ``[-(2^(b-1) - 1), 2^(b-1) - 1]`` or full
  ``[-2^(b-1), 2^(b-1) - 1]`` (:func:`weight_grid`), per output channel (axis 0) or per tensor::

      s = clip * max|w| / (2^(b-1) - 1)                                 (:func:`weight_scale`)

  ``clip`` in (0, 1] (1 = the max range; MSE calibration lowers it). A learned range ``r``
  replaces ``clip * max|w|`` by ``|r|`` (:func:`symmetric_scale` of it).
- **activations**: asymmetric unsigned grid ``[0, 2^b - 1]`` (:func:`act_grid`) over the range
  ``[lo', hi'] = [min(lo, 0), max(hi, 0)]``, widened so that 0 is exactly representable::

      s = (hi' - lo') / (2^b - 1),   z = clamp(round(-lo' / s), 0, 2^b - 1)   (:func:`asymmetric_qparams`)

Every scale is at least ``EPS / (grid top)``: a range of 0 still gives a finite, positive scale.

**Power-of-two scales** (``pow2=True``, the scheme ``quantization.scale=pow2``: shift-only integer
hardware, where requantizing ``s_x s_w / s_y`` must be a bit shift). Every scale above is computed
as a float first (from whatever range max, MSE, percentile or LSQ gave), then rounded *up* to a
power of two by :func:`pow2_scale`, the one statement of the rule::

    s_pow2 = 2^ceil(log2 s)                     (s_pow2 in [s, 2 s); s_pow2 = s when s = 2^k)

for weights and activations alike (shift-only hardware needs both: requantization shifts by
``k_x + k_w - k_y``). Why the ceiling and not the nearest exponent ``2^round(log2 s)``: a larger
step never clips what the float range covered (``qmax s_pow2 >= qmax s``: the weight's largest
magnitude stays on the grid, so the clip-free fast path and AdaRound's top-of-grid rule stay
valid), at the price of up to one bit of resolution; the nearest exponent halves the worst step
growth (``2^0.5``) but clips up to 29% of the range. Brevitas's fixed-point quantizers
(``PowerOfTwoRestrictValue`` with ``CeilSte``) round the same way. The exponent is read exactly
with ``frexp`` (``s = m 2^e``, ``m`` in ``[1/2, 1)``: ``k = e - 1`` when ``m = 1/2``, else ``e``),
never through a rounded ``log2``, and :func:`host_pow2_scale` computes it bit for bit on host floats.
:func:`host_asymmetric_qparams` computes the activation formula on host floats in float32
arithmetic, bit for bit the same as the tensor formula (the tests compare both): on CPU reading a
scalar is free, while each tiny tensor op costs ~5 us of dispatch.
"""

from __future__ import annotations

import math

import numpy as np
import torch

EPS = 1e-8


def weight_grid(bits: int, narrow_range: bool) -> tuple[int, int]:
    """Signed integer grid for symmetric weights: full or narrow (see QuantConfig)."""
    half = 2 ** (bits - 1)
    return (-(half - 1) if narrow_range else -half), half - 1


def act_grid(bits: int) -> tuple[int, int]:
    """Unsigned integer grid for asymmetric activations: ``[0, 2^b - 1]``."""
    return 0, 2**bits - 1


def pow2_scale(scale: torch.Tensor) -> torch.Tensor:
    """``2^ceil(log2 s)`` elementwise, exactly (module docstring): the one power-of-two rule."""
    mantissa, exponent = torch.frexp(scale)
    snapped = torch.ldexp(torch.ones_like(scale), exponent - (mantissa == 0.5).to(exponent.dtype))
    return torch.where(torch.isfinite(scale), snapped, scale)  # inf and nan propagate, as on host


def host_pow2_scale(scale: float) -> float:
    """:func:`pow2_scale` of one host float (a float32 value): the same power of two, bit for bit."""
    mantissa, exponent = math.frexp(scale)
    return math.ldexp(1.0, exponent - (mantissa == 0.5)) if math.isfinite(scale) and scale > 0 else scale


def symmetric_scale(absmax: torch.Tensor, bits: int, pow2: bool = False) -> torch.Tensor:
    """``s = max|w| / (2^(b-1) - 1)``: the largest magnitude maps onto the top grid point; with
    ``pow2``, :func:`pow2_scale` of it (the largest magnitude then maps at or below the top)."""
    scale = absmax.clamp_min(EPS) / (2 ** (bits - 1) - 1)
    return pow2_scale(scale) if pow2 else scale


def weight_absmax(w: torch.Tensor, per_channel: bool) -> torch.Tensor:
    """``max|w|`` per output channel (axis 0, shape ``[C]``) or per tensor (shape ``[1]``), as
    ``max(max w, -min w)``: two reads of ``w`` and no ``|w|`` temporary (half the time of
    ``w.abs().amax()`` on a 128x3136 weight), the same value bit for bit."""
    if not per_channel:
        return torch.maximum(w.amax(), w.amin().neg_()).reshape(1)
    dims = tuple(range(1, w.dim()))
    return torch.maximum(w.amax(dim=dims), w.amin(dim=dims).neg_())


def weight_scale(w: torch.Tensor, clip: torch.Tensor, bits: int, per_channel: bool,
                 pow2: bool = False) -> torch.Tensor:
    """The weight scale ``s = clip * max|w| / (2^(b-1) - 1)`` per output channel (shape ``[C]``;
    ``clip`` of shape ``[C]``) or per tensor (shape ``[1]``; ``clip`` of shape ``[1]``); with
    ``pow2``, ``2^ceil(log2 s)`` (:func:`pow2_scale`).

    The one statement of the formula: :class:`~fedquant.quant.quantizers.WeightQuantizer` (training,
    calibration, evaluation) and the server's weight freezing (on an aggregated state dict) both
    call it."""
    return symmetric_scale(weight_absmax(w, per_channel) * clip, bits, pow2)


def asymmetric_qparams(lo: torch.Tensor, hi: torch.Tensor, bits: int,
                       pow2: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and integer zero-point for the range ``[min(lo, 0), max(hi, 0)]`` on ``[0, 2^b - 1]``.

    The range is widened to contain 0 and the zero-point is rounded, so 0 is exactly representable.
    With ``pow2`` the scale is :func:`pow2_scale` of the float one and the zero-point is rounded
    on that grid: ``z = clamp(round(-lo' / s_pow2), 0, 2^b - 1)``.
    """
    qmax = 2**bits - 1
    lo, hi = lo.clamp(max=0.0), hi.clamp(min=0.0)
    scale = (hi - lo).clamp_min(EPS) / qmax
    if pow2:
        scale = pow2_scale(scale)
    zero_point = torch.round(-lo / scale).clamp(0, qmax)
    return scale, zero_point


def host_asymmetric_qparams(lo: float, hi: float, bits: int, pow2: bool = False) -> tuple[float, float]:
    """:func:`asymmetric_qparams` on host floats in float32 arithmetic: bit for bit the same
    scale and zero-point (the tests compare both), without nine tiny tensor ops."""
    qmax = 2**bits - 1
    lo32, hi32 = np.float32(min(lo, 0.0)), np.float32(max(hi, 0.0))
    with np.errstate(over="ignore", invalid="ignore"):  # inf and nan propagate as on tensors
        scale = max(hi32 - lo32, np.float32(EPS)) / np.float32(qmax)
        if pow2:
            scale = np.float32(host_pow2_scale(float(scale)))
        zero_point = min(max(float(np.rint(-lo32 / scale)), 0.0), float(qmax))
    return float(scale), zero_point
