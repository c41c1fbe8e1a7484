"""Learned ranges: LSQ (Esser et al. 2020, arXiv 1902.08153) and LSQ+ (Bhalgat et al. 2020).

LSQ as published in its dynamics, on the stored range. For an integer grid ``[-Q_N, Q_P]`` and
step ``s``, with ``v = x / s`` and ``inside = -Q_N < v < Q_P``::

    x_hat = s * round(clamp(v, -Q_N, Q_P))                           (LSQ eq. 3: clip, then round)
    dL/dx = dL/dx_hat * inside                                       (eq. 5)
    dL/ds = sum dL/dx_hat * (round(v) - v if inside else -Q_N if v <= -Q_N else Q_P)   (eq. 4)

and the step's gradient is scaled by ``g = 1 / sqrt(N * Q_P)``, N the number of elements the step
covers. The step itself is not stored: see :class:`LSQWeight` and :class:`LSQActivation` for how
an SGD step on the stored range reproduces LSQ's step on ``s`` (and LSQ+'s on its offset). The
scales come from the formulas of :mod:`fedquant.quant.grids`.

**Power-of-two scales** (``pow2``): the forward pass quantizes with the snapped step
``s_pow2 = 2^ceil(log2 s)`` (:func:`~fedquant.quant.grids.pow2_scale`) and the backward pass
treats the snap as the identity, ``d s_pow2 / d s = 1`` (straight-through for the exponent, as
Brevitas's ``CeilSte``): eqs. 4-5 are evaluated at ``s_pow2`` and the range moves as if ``s``
were free, so the learned float range drifts continuously while the deployed step jumps between
powers of two.
"""

from __future__ import annotations

import math

import torch

from .grids import asymmetric_qparams, symmetric_scale, weight_grid


def _lsq_grads(grad: torch.Tensor, x: torch.Tensor, s: torch.Tensor, qmin, qmax,
               dims: tuple[int, ...] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """LSQ's ``dL/dx`` (eq. 5) and ``dL/ds`` (eq. 4, summed over ``dims``; all when None) for
    the grid ``[qmin, qmax]`` (integers: floats or tensors broadcastable to ``x``)."""
    v = x / s
    inside = torch.gt(v, qmin, out=torch.empty_like(v))  # float 1/0 masks: no bool->float pass
    inside.mul_(torch.lt(v, qmax, out=torch.empty_like(v)))
    q = torch.clamp(v, qmin, qmax).round_()
    grad_x = inside.mul_(grad)
    ds = q.mul_(grad).sub_(v.mul_(grad_x))  # g * (q - v) inside, g * q (= -Q_N or Q_P) outside
    return grad_x, (ds.sum() if dims is None else ds.sum(dims))


class LSQWeight(torch.autograd.Function):
    """LSQ for a symmetric weight grid ``[-Q_N, Q_P]`` (``Q_P = 2^(b-1) - 1``, ``Q_N = Q_P`` narrow
    or ``Q_P + 1`` full) whose stored state is the range ``r`` (per channel or ``[1]``)::

        s = max(|r|, EPS) / Q_P,   x_hat = s * round(clamp(x / s, -Q_N, Q_P))
        dL/dr = sign(r) * Q_P * g * dL/ds,   g = 1 / sqrt(N * Q_P)

    with ``dL/dx``, ``dL/ds`` as in the module docstring (LSQ eqs. 4-5), N the elements one step
    covers: one output channel (``x[0].numel()``) per channel, all of ``x`` per tensor. Why
    ``Q_P`` and not the chain rule's ``1 / Q_P``: LSQ's SGD step is ``ds = -lr * g * dL/ds``; the
    same step expressed on the range is ``dr = Q_P * ds = -lr * (Q_P * g * dL/ds)``, so that is
    the gradient ``r`` must receive (the chain rule would move ``s`` ``Q_P^2`` times slower). A
    range of 0 takes the sign +1.
    """

    @staticmethod
    def forward(ctx, x, rng, bits: int, narrow_range: bool, per_channel: bool, pow2: bool = False):  # noqa: D102
        qmin, qmax = weight_grid(bits, narrow_range)
        s = symmetric_scale(rng.abs(), bits, pow2)
        if per_channel:
            s = s.reshape((-1,) + (1,) * (x.dim() - 1))
        ctx.save_for_backward(x, s, rng)
        ctx.grid, ctx.per_channel = (qmin, qmax), per_channel
        return torch.div(x, s).clamp_(qmin, qmax).round_().mul_(s)

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        x, s, rng = ctx.saved_tensors
        qmin, qmax = ctx.grid
        dims = tuple(range(1, x.dim())) if ctx.per_channel else None
        grad_x, ds = _lsq_grads(grad, x, s, qmin, qmax, dims)
        n = x[0].numel() if ctx.per_channel else x.numel()
        factor = qmax / math.sqrt(n * qmax)  # Q_P * g
        grad_r = torch.where(rng < 0, -factor, factor) * ds.reshape(rng.shape)
        return grad_x, grad_r, None, None, None, None


class LSQActivation(torch.autograd.Function):
    """LSQ+ (Bhalgat et al. 2020) for the asymmetric grid ``[0, Q_P]``, ``Q_P = 2^b - 1``, whose
    stored state is the range ``(lo, hi)``, widened to contain 0 (``lo' = min(lo, 0)``,
    ``hi' = max(hi, 0)``). Learned: the step ``s`` and the offset ``beta`` (the grid's bottom)::

        s = (hi' - lo') / Q_P,   z = round(-lo' / s),   beta = -z * s
        x_hat = s * round(clamp(x / s, -z, Q_P - z))  # = s * round(clamp((x - beta)/s, 0, Q_P)) + beta

    that is LSQ on the integer grid ``[-z, Q_P - z]``: ``dL/dx`` and ``dL/ds_z`` (``z`` fixed) as
    in the module docstring. LSQ+ holds ``beta`` fixed instead: ``dL/dbeta = sum over clipped
    elements of dL/dx_hat`` and ``dL/ds = dL/ds_z + z * dL/dbeta``; both get LSQ's scale
    ``g = 1 / sqrt(N_F * Q_P)``, N_F the features per sample (``x[0].numel()``; LSQ: "the number
    of features in a layer"). The range is ``lo' = beta`` (up to the rounding of ``z``: straight
    through) and ``hi' = beta + Q_P * s``, so LSQ+'s SGD step ``(dbeta, ds)`` is the step
    ``dlo = dbeta``, ``dhi = dbeta + Q_P * ds`` on the range, given by the gradients::

        dL/dlo = g * dL/dbeta,   dL/dhi = g * (dL/dbeta + Q_P * dL/ds)

    An end pinned at 0 (``lo >= 0``: z = 0, or ``hi <= 0``: z = Q_P) leaves no free offset: then
    only ``s`` is learned (LSQ on ``[-z, Q_P - z]``) and it moves the free end, ``dhi = Q_P ds``
    (``dL/dhi = g Q_P dL/ds``) or ``dlo = -Q_P ds`` (``dL/dlo = -g Q_P dL/ds_z``); the pinned end
    gets 0. ReLU inputs (``lo = 0``) are thus plain unsigned LSQ.
    """

    @staticmethod
    def forward(ctx, x, lo, hi, bits: int, pow2: bool = False):  # noqa: D102
        qmax = 2**bits - 1
        s, z = asymmetric_qparams(lo, hi, bits, pow2)
        ctx.save_for_backward(x, s, z, lo, hi)
        ctx.qmax = qmax
        return torch.div(x, s).clamp_(-z, qmax - z).round_().mul_(s)

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        x, s, z, lo, hi = ctx.saved_tensors
        qmax = ctx.qmax
        grad_x, ds_z = _lsq_grads(grad, x, s, -z, qmax - z, None)
        dbeta = (grad - grad_x).sum()
        ds = ds_z + z * dbeta
        g = 1.0 / math.sqrt((x[0].numel() if x.dim() > 1 else x.numel()) * qmax)
        free_lo, free_hi = lo < 0, hi > 0
        zero = torch.zeros_like(ds)
        grad_lo = torch.where(free_lo, g * torch.where(free_hi, dbeta, -qmax * ds_z), zero)
        grad_hi = torch.where(free_hi, g * (qmax * ds + torch.where(free_lo, dbeta, zero)), zero)
        return grad_x, grad_lo, grad_hi, None, None
