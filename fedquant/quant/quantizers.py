"""Fake quantizers: a few in-place vectorised ops per call, no host syncs on accelerators.

Math (arXiv 2106.08295): ``q = clamp(round(x / s) + z, qmin, qmax)``, ``x_hat = (q - z) * s``.
Gradients use the straight-through estimator with the clipping mask: ``dL/dx = dL/dx_hat`` where
``qmin <= round(x / s) + z <= qmax`` and 0 elsewhere.

Why not ``torch.fake_quantize_per_{tensor,channel}_affine`` in the hot path: on CPU (torch 2.13)
those kernels took 3.2 ms forward+backward for a 128x3136 weight against 0.4 ms for
:class:`FakeQuantize` below, which computes the same values bit for bit (the tests compare both)
with in-place vectorised ops and keeps only the mask for backward.

The shared, aggregatable state is the *range* (``clip`` for weights, ``min_val``/``max_val`` for
activations); the scale for the current bit-width is derived from it on every call, so a range
learned at one bit-width serves all the others. On CPU, activation quantizers read their range
and derive scale and zero-point on host floats (float32 arithmetic, bit for bit the same as the
tensor formulas, which the tests check): reading a CPU scalar is free, while each tiny tensor op
costs ~5 us of dispatch.

Learned ranges (``learned=True``): LSQ (Esser et al. 2020, arXiv 1902.08153) as published in its
dynamics, on the stored range. For an integer grid ``[-Q_N, Q_P]`` and step ``s``, with
``v = x / s`` and ``inside = -Q_N < v < Q_P``::

    x_hat = s * round(clamp(v, -Q_N, Q_P))                           (LSQ eq. 3: clip, then round)
    dL/dx = dL/dx_hat * inside                                       (eq. 5)
    dL/ds = sum dL/dx_hat * (round(v) - v if inside else -Q_N if v <= -Q_N else Q_P)   (eq. 4)

and the step's gradient is scaled by ``g = 1 / sqrt(N * Q_P)``, N the number of elements the step
covers. The step itself is not stored: see :class:`LSQWeight` and :class:`LSQActivation` for how
an SGD step on the stored range reproduces LSQ's step on ``s`` (and LSQ+'s on its offset).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from .config import GRANULARITIES, check_bits, check_choice

EPS = 1e-8


def weight_grid(bits: int, narrow_range: bool) -> tuple[int, int]:
    """Signed integer grid for symmetric weights: full or narrow (see QuantConfig)."""
    half = 2 ** (bits - 1)
    return (-(half - 1) if narrow_range else -half), half - 1


def act_grid(bits: int) -> tuple[int, int]:
    """Unsigned integer grid for asymmetric activations: ``[0, 2^b - 1]``."""
    return 0, 2**bits - 1


def symmetric_scale(absmax: torch.Tensor, bits: int) -> torch.Tensor:
    """``s = max|w| / (2^(b-1) - 1)``: the largest magnitude maps onto the top grid point."""
    return absmax.clamp_min(EPS) / (2 ** (bits - 1) - 1)


def asymmetric_qparams(lo: torch.Tensor, hi: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and integer zero-point for the range ``[min(lo, 0), max(hi, 0)]`` on ``[0, 2^b - 1]``.

    The range is widened to contain 0 and the zero-point is rounded, so 0 is exactly representable.
    """
    qmax = 2**bits - 1
    lo, hi = lo.clamp(max=0.0), hi.clamp(min=0.0)
    scale = (hi - lo).clamp_min(EPS) / qmax
    zero_point = torch.round(-lo / scale).clamp(0, qmax)
    return scale, zero_point


def host_asymmetric_qparams(lo: float, hi: float, bits: int) -> tuple[float, float]:
    """:func:`asymmetric_qparams` on host floats in float32 arithmetic: bit for bit the same
    scale and zero-point (the tests compare both), without nine tiny tensor ops."""
    qmax = 2**bits - 1
    lo32, hi32 = np.float32(min(lo, 0.0)), np.float32(max(hi, 0.0))
    with np.errstate(over="ignore", invalid="ignore"):  # inf and nan propagate as on tensors
        scale = max(hi32 - lo32, np.float32(EPS)) / np.float32(qmax)
        zero_point = min(max(float(np.rint(-lo32 / scale)), 0.0), float(qmax))
    return float(scale), zero_point


def memory_order(x: torch.Tensor) -> torch.Tensor:
    """``x`` permuted so that it is contiguous (a view): channels_last 4-D tensors become NHWC.

    Elementwise ops and reductions run up to 5x faster on the contiguous view than on the
    channels_last tensor itself (measured with torch 2.13 on CPU: ``aminmax`` of a 32x32x28x28
    activation took 0.95 ms against 0.18 ms). Axis 0 stays axis 0, so per-channel scales of
    shape ``(C_out, 1, 1, 1)`` broadcast the same way.
    """
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return x.permute(0, 2, 3, 1)
    return x


class FakeQuantize(torch.autograd.Function):
    """``x_hat = (clamp(round(x * (1/s)) + z, qmin, qmax) - z) * s`` with the clipping-mask STE.

    ``scale``/``zero_point`` are float tensors broadcastable to ``x``, or host floats for a
    per-tensor grid (``zero_point`` may be None for symmetric grids); per-channel scales index
    axis 0. ``clip_free=True`` promises that no
    element can fall outside the grid (e.g. weights with the range ``max|w|``): then the mask is
    all ones, backward is the identity and the clamp is skipped. The output has ``x``'s layout.
    """

    @staticmethod
    def forward(ctx, x, scale, zero_point, qmin, qmax, clip_free=False):  # noqa: D102
        xm = memory_order(x)
        permuted = xm is not x
        if isinstance(scale, float):
            inv_scale = float(np.float32(1.0) / np.float32(scale))
        else:
            if permuted and scale.dim() == 4:
                scale = scale.permute(0, 2, 3, 1)
            inv_scale = scale.reciprocal()
        q = torch.mul(xm, inv_scale).round_()  # same rounding as torch: nearbyint(x * inv_s)
        shift = zero_point is not None
        if isinstance(zero_point, float):
            # clamp(q + z, qmin, qmax) - z == clamp(q, qmin - z, qmax - z) bit for bit (q and z are
            # integers; where q + z is not exact, both sides clamp): two passes fewer. A tensor z
            # (on a GPU, where reading it would be a host sync) is added and subtracted instead.
            qmin, qmax, shift = qmin - zero_point, qmax - zero_point, False
        if shift:
            q.add_(zero_point)
        keep_mask = ctx.needs_input_grad[0] and not clip_free
        # empty_like keeps q's exact strides, also those of size-1 dims, which a plain
        # out-of-place clamp may rewrite: a (32, 1, 3, 3) channels_last weight would come back
        # in the default layout and turn the first conv's whole stage NCHW (~40% slower steps).
        if keep_mask:
            out = torch.clamp(q, qmin, qmax, out=torch.empty_like(q))
        else:
            out = q if clip_free else q.clamp_(qmin, qmax)  # clip_free: the clamp would change nothing
        if keep_mask:
            mask = torch.eq(q, out, out=q)  # float 1/0 in q's own memory
            ctx.save_for_backward(mask.permute(0, 3, 1, 2) if permuted else mask)
        ctx.clip_free = clip_free
        if shift:
            out.sub_(zero_point)
        out.mul_(scale)
        return out.permute(0, 3, 1, 2) if permuted else out

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        if ctx.clip_free:
            return grad, None, None, None, None, None
        (mask,) = ctx.saved_tensors
        return grad * mask, None, None, None, None, None


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
    def forward(ctx, x, rng, bits: int, narrow_range: bool, per_channel: bool):  # noqa: D102
        qmin, qmax = weight_grid(bits, narrow_range)
        s = symmetric_scale(rng.abs(), bits)
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
        return grad_x, grad_r, None, None, None


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
    def forward(ctx, x, lo, hi, bits: int):  # noqa: D102
        qmax = 2**bits - 1
        s, z = asymmetric_qparams(lo, hi, bits)
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
        return grad_x, grad_lo, grad_hi, None


class WeightQuantizer(nn.Module):
    """Symmetric signed weight quantizer, per output channel (axis 0) or per tensor.

    The range is ``clip * max|w|`` taken from the current weights on every call (cheap: one
    reduction over the weight), so it follows training without state. ``clip`` (in (0, 1]) is
    set by MSE calibration; with ``learned=True`` the range itself is a parameter trained with
    LSQ (Esser et al. 2020; see :class:`LSQWeight`) and ``clip`` is unused.
    """

    def __init__(self, weight: torch.Tensor, granularity: str = "per_channel",
                 narrow_range: bool = True, learned: bool = False) -> None:
        super().__init__()
        self.granularity = check_choice(granularity, GRANULARITIES, "weight_granularity")
        self.narrow_range = narrow_range
        self.learned = learned
        self.bits: int | None = None
        channels = weight.shape[0] if granularity == "per_channel" else 1
        self.register_buffer("clip", torch.ones(channels))
        self.register_buffer("_zero_point", torch.zeros(channels, dtype=torch.int32), persistent=False)
        self.view = (-1,) + (1,) * (weight.dim() - 1)  # scale shape that broadcasts over a channel
        self.min_clip = 1.0  # host copy of clip.min(): decides whether the STE needs its mask
        self._frozen: tuple | None = None  # (key, w_hat): reused while no gradient is needed
        if learned:
            self.range = nn.Parameter(self.absmax(weight.detach()).clone())

    def absmax(self, w: torch.Tensor) -> torch.Tensor:
        """``max|w|`` per channel (or per tensor) as ``max(max w, -min w)``: two reads of ``w``
        and no ``|w|`` temporary (half the time of ``w.abs().amax()`` on a 128x3136 weight)."""
        if self.granularity == "per_tensor":
            return torch.maximum(w.amax(), w.amin().neg_()).reshape(1)
        dims = tuple(range(1, w.dim()))
        return torch.maximum(w.amax(dim=dims), w.amin(dim=dims).neg_())

    def set_bits(self, bits: int | None) -> None:
        self.bits = check_bits(bits, "weight_bits")

    def set_clip(self, clip: torch.Tensor) -> None:
        """Set the clip fractions (MSE calibration); keeps ``min_clip`` true."""
        self.clip.copy_(clip)
        self._sync_min_clip()

    def _sync_min_clip(self) -> None:
        self.min_clip = float(self.clip.min())  # one host sync, at calibration/load only

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._sync_min_clip()

    @torch.no_grad()
    def quantize_at_clip(self, w: torch.Tensor, clip: torch.Tensor) -> torch.Tensor:
        """``w`` fake-quantized at the current bit-width with the range ``clip * max|w|`` (per
        channel or per tensor, like ``self.clip``); no gradient. Calibration's search uses it."""
        qmin, qmax = weight_grid(self.bits, self.narrow_range)
        scale = symmetric_scale(self.absmax(w) * clip, self.bits)
        if self.granularity == "per_tensor":
            return torch.fake_quantize_per_tensor_affine(w, scale, self._zero_point, qmin, qmax)
        return torch.fake_quantize_per_channel_affine(w, scale, self._zero_point, 0, qmin, qmax)

    def clips_nothing(self, qmax: int) -> bool:
        """True when no weight can round outside the grid, so the STE mask is all ones.

        ``|w| <= max|w|`` maps to at most ``qmax / clip`` grid steps, which rounds to ``qmax``
        while ``qmax / clip < qmax + 1/2`` (1e-6 covers the float rounding of the scale). A clip
        a few ulps below 1, as averaging ``clip = 1`` across clients gives, clips nothing.
        """
        return self.min_clip * (qmax + 0.5) > qmax * (1 + 1e-6)

    def scale(self, w: torch.Tensor) -> torch.Tensor:
        """Scale for the current bit-width (per channel, or shape [1])."""
        absmax = self.range.abs() if self.learned else self.absmax(w.detach()) * self.clip
        return symmetric_scale(absmax, self.bits)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if self.bits is None:
            return w
        if torch.is_grad_enabled() and w.requires_grad:
            return self._quantize(w)
        # Evaluation and calibration: the weights are constant across batches, so quantize once.
        # The key changes with any in-place update (_version) or new storage (load, .to()) of
        # whatever the result depends on, with the bit-width, and with inference mode.
        range_state = self.range if self.learned else self.clip
        key = (w.data_ptr(), w._version, range_state.data_ptr(), range_state._version, self.bits,
               torch.is_inference_mode_enabled())
        if self._frozen is None or self._frozen[0] != key:
            self._frozen = (key, self._quantize(w))
        return self._frozen[1]

    def _quantize(self, w: torch.Tensor) -> torch.Tensor:
        if self.learned:
            return LSQWeight.apply(w, self.range, self.bits, self.narrow_range,
                                   self.granularity == "per_channel")
        qmin, qmax = weight_grid(self.bits, self.narrow_range)
        scale = self.scale(w)
        if self.granularity == "per_channel":
            scale = scale.reshape(self.view)
        return FakeQuantize.apply(w, scale, None, qmin, qmax, self.clips_nothing(qmax))


class ActivationQuantizer(nn.Module):
    """Asymmetric unsigned per-tensor activation quantizer with a tracked range.

    Training: the range follows batch min/max with momentum ``m``: ``r <- r + m (r_batch - r)``
    (the first batch initialises it). ``tracking="running"`` quantizes batch t with the range
    updated by batch t; ``"hindsight"`` quantizes it with the range estimated up to batch t-1
    (in-hindsight range estimation, Fournarakis & Nagel 2021). Evaluation: the range is frozen
    (set it with :func:`fedquant.quant.calibrate`). A range with ``max <= min`` counts as not yet
    observed; this encoding averages cleanly across federated clients (no flags, no infinities).
    ``learned=True`` makes ``min_val``/``max_val`` parameters trained with LSQ+ (see
    :class:`LSQActivation`).
    """

    def __init__(self, tracking: str = "running", momentum: float = 0.1, learned: bool = False) -> None:
        super().__init__()
        self.tracking = tracking
        self.momentum = momentum
        self.learned = learned
        self.bits: int | None = None
        self.observer: Callable[[torch.Tensor], None] | None = None  # see observe()
        self.host_scalars = True  # on CPU (see the module docstring); False forces the device path
        if learned:
            self.min_val = nn.Parameter(torch.zeros(()))
            self.max_val = nn.Parameter(torch.zeros(()))
        else:
            self.register_buffer("min_val", torch.zeros(()))
            self.register_buffer("max_val", torch.zeros(()))

    def set_bits(self, bits: int | None) -> None:
        self.bits = check_bits(bits, "act_bits")

    def observe(self, observer: Callable[[torch.Tensor], None] | None) -> None:
        """While ``observer`` is set, every input is passed to it and returned unquantized
        (calibration: each quantizer sees the float inputs of the quantized-weight model)."""
        self.observer = observer

    @torch.no_grad()
    def set_range(self, lo: torch.Tensor, hi: torch.Tensor) -> None:
        """Freeze the range at ``[lo, max(hi, lo + EPS)]`` (calibration)."""
        self.min_val.copy_(lo)
        self.max_val.copy_(torch.maximum(hi, lo + EPS))

    @torch.no_grad()
    def _track(self, x: torch.Tensor, momentum: float) -> tuple[float, float] | None:
        """``r <- r + momentum (r_batch - r)``, or ``r <- r_batch`` while no range was observed.

        With host scalars the update runs in float32 arithmetic on host floats (two fills instead
        of ten tensor ops) and the new range is returned; otherwise it stays on the device.
        """
        lo, hi = torch.aminmax(memory_order(x.detach()))
        if self._on_host(x):
            lo, hi = lo.item(), hi.item()
            r_lo, r_hi = self.min_val.item(), self.max_val.item()
            if r_hi > r_lo:
                with np.errstate(over="ignore", invalid="ignore"):
                    m = np.float32(momentum)
                    lo = float(np.float32(r_lo) + m * (np.float32(lo) - np.float32(r_lo)))
                    hi = float(np.float32(r_hi) + m * (np.float32(hi) - np.float32(r_hi)))
            self.min_val.fill_(lo)
            self.max_val.fill_(hi)
            return lo, hi
        seen = self.max_val > self.min_val
        self.min_val.copy_(torch.where(seen, self.min_val + momentum * (lo - self.min_val), lo))
        self.max_val.copy_(torch.where(seen, self.max_val + momentum * (hi - self.max_val), hi))
        return None

    def _on_host(self, x: torch.Tensor) -> bool:
        return self.host_scalars and x.device.type == "cpu"

    def qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        return asymmetric_qparams(self.min_val, self.max_val, self.bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observer is not None:
            self.observer(x)
            return x
        if self.bits is None:
            return x
        host_range = None
        if self.training:
            # running: update, then quantize; hindsight and learned: only initialise an unseen
            # range here (momentum 0), quantize with the range from earlier batches.
            running = self.tracking == "running" and not self.learned
            host_range = self._track(x, self.momentum if running else 0.0)
        _, qmax = act_grid(self.bits)
        if self.learned:
            out = LSQActivation.apply(x, self.min_val, self.max_val, self.bits)
        elif self._on_host(x):
            lo, hi = host_range or (self.min_val.item(), self.max_val.item())
            out = FakeQuantize.apply(x, *host_asymmetric_qparams(lo, hi, self.bits), 0, qmax)
        else:
            out = FakeQuantize.apply(x, *self.qparams(), 0, qmax)
        if self.training and self.tracking == "hindsight" and not self.learned:
            self._track(x, self.momentum)
        return out
