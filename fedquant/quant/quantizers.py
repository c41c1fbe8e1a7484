"""The fake quantizer modules: :class:`WeightQuantizer` and :class:`ActivationQuantizer`.

Each holds the shared, aggregatable state of one tensor's quantization, its *range* (``clip``, a
fraction of ``max|w|``, for weights; ``min_val``/``max_val`` for activations), and derives the
scale (and zero-point) for the current bit-width from it on every call, with the formulas of
:mod:`fedquant.quant.grids`: a range learned at one bit-width serves all the others, and
averaging it across federated clients averages one quantity whatever bit-widths they trained at.
The forward pass is :class:`~fedquant.quant.fake_quantize.FakeQuantize` (straight-through
estimator), or LSQ/LSQ+ (:mod:`fedquant.quant.lsq`) for learned ranges.

On CPU, activation quantizers read their range and derive scale and zero-point on host floats
(:func:`~fedquant.quant.grids.host_asymmetric_qparams`, bit for bit the same as the tensor
formulas): reading a CPU scalar is free, while each tiny tensor op costs ~5 us of dispatch.

**The scheme** (:class:`~fedquant.quant.scheme.Scheme`) is a run-time switch like the bit-width:
``pow2`` rounds every scale up to a power of two (:func:`~fedquant.quant.grids.pow2_scale`), and
a weight quantizer whose state (``clip``, a learned ``range``) is per channel can run per tensor.
The state keeps its shape, so clients of every scheme share one aggregatable state; per tensor, the
range is ``max(clip) * max|w|`` (MSE calibration at that granularity writes one fraction into
every channel). The reverse, per channel on a per-tensor state, has no per-channel ranges to
calibrate and is refused.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from .config import GRANULARITIES, check_bits, check_choice
from .fake_quantize import FakeQuantize, memory_order
from .grids import (
    EPS,
    act_grid,
    asymmetric_qparams,
    host_asymmetric_qparams,
    symmetric_scale,
    weight_absmax,
    weight_grid,
    weight_scale,
)
from .lsq import LSQActivation, LSQWeight


class WeightQuantizer(nn.Module):
    """Symmetric signed weight quantizer, per output channel (axis 0) or per tensor.

    The range is ``clip * max|w|`` taken from the current weights on every call (cheap: one
    reduction over the weight), so it follows training without state. ``clip`` (in (0, 1]) is
    set by MSE calibration; with ``learned=True`` the range itself is a parameter trained with
    LSQ (Esser et al. 2020; see :class:`LSQWeight`) and ``clip`` is unused. ``granularity`` is
    the granularity of that state and the initial scheme's; ``pow2`` rounds every scale up to
    ``2^ceil(log2 s)``. :meth:`set_scheme` switches both at run time (module docstring).
    """

    def __init__(self, weight: torch.Tensor, granularity: str = "per_channel",
                 narrow_range: bool = True, learned: bool = False, pow2: bool = False) -> None:
        super().__init__()
        self.granularity = check_choice(granularity, GRANULARITIES, "weight_granularity")
        self.state_granularity = self.granularity  # the shape of clip / range: fixed
        self.narrow_range = narrow_range
        self.learned = learned
        self.pow2 = pow2
        self.bits: int | None = None
        channels = weight.shape[0] if granularity == "per_channel" else 1
        self.register_buffer("clip", torch.ones(channels))
        self.register_buffer("_zero_point", torch.zeros(channels, dtype=torch.int32), persistent=False)
        self.view = (-1,) + (1,) * (weight.dim() - 1)  # scale shape that broadcasts over a channel
        self.min_clip = 1.0  # host copy of clip.min(): decides whether the STE needs its mask
        self._frozen: tuple | None = None  # (key, w_hat): reused while no gradient is needed
        if learned:
            self.range = nn.Parameter(self.absmax(weight.detach()).clone())

    @property
    def per_channel(self) -> bool:
        return self.granularity == "per_channel"

    @property
    def num_scales(self) -> int:
        """Scales at the current granularity: one per output channel, or one."""
        return self.clip.numel() if self.per_channel else 1

    def set_scheme(self, granularity: str, pow2: bool) -> None:
        """Run at ``granularity`` with float or power-of-two scales from now on (the state keeps
        its shape). A per-tensor state cannot run per channel, nor a learned range at another
        granularity than its own: ``ValueError``."""
        check_choice(granularity, GRANULARITIES, "weight_granularity")
        if granularity != self.state_granularity and (self.learned or granularity == "per_channel"):
            held = "a learned range" if self.learned else "clip fractions"
            raise ValueError(f"weight_granularity={granularity!r} is not valid for a quantizer whose state ({held}) is "
                             f"{self.state_granularity}: allowed is {self.state_granularity}"
                             + ("" if self.learned else " or per_tensor"))
        self.granularity, self.pow2 = granularity, bool(pow2)

    def _clip_at(self, clip: torch.Tensor) -> torch.Tensor:
        """The clip fractions at the current granularity: as given, or per tensor their largest."""
        return clip if self.per_channel or clip.numel() == 1 else clip.amax().reshape(1)

    def absmax(self, w: torch.Tensor) -> torch.Tensor:
        """``max|w|`` per channel (shape ``[C]``) or per tensor (``[1]``): see
        :func:`~fedquant.quant.grids.weight_absmax`."""
        return weight_absmax(w, self.per_channel)

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
        scale = weight_scale(w, self._clip_at(clip), self.bits, self.per_channel, self.pow2)
        if not self.per_channel:
            return torch.fake_quantize_per_tensor_affine(w, scale, self._zero_point[:1], qmin, qmax)
        return torch.fake_quantize_per_channel_affine(w, scale, self._zero_point, 0, qmin, qmax)

    def clips_nothing(self, qmax: int) -> bool:
        """True when no weight can round outside the grid, so the STE mask is all ones.

        ``|w| <= max|w|`` maps to at most ``qmax / clip`` grid steps, which rounds to ``qmax``
        while ``qmax / clip < qmax + 1/2`` (1e-6 covers the float rounding of the scale). A clip
        a few ulps below 1, as averaging ``clip = 1`` across clients gives, clips nothing.
        """
        return self.min_clip * (qmax + 0.5) > qmax * (1 + 1e-6)

    def scale_at(self, w: torch.Tensor, bits: int) -> torch.Tensor:
        """The scale of weight ``w`` at ``bits``, shaped to broadcast over ``w`` (``[C, 1, ...]``
        per channel, ``[1]`` per tensor): ``clip * max|w| / (2^(b-1) - 1)``
        (:func:`~fedquant.quant.grids.weight_scale`), or ``|range| / (2^(b-1) - 1)`` for a learned
        range (the scale :class:`~fedquant.quant.lsq.LSQWeight` quantizes with); with ``pow2``,
        rounded up to a power of two. ``w`` is read without gradient; a learned range keeps its own."""
        if self.learned:
            scale = symmetric_scale(self.range.abs(), bits, self.pow2)
        else:
            scale = weight_scale(w.detach(), self._clip_at(self.clip), bits, self.per_channel, self.pow2)
        return scale.reshape(self.view) if self.per_channel else scale

    def scale(self, w: torch.Tensor) -> torch.Tensor:
        """:meth:`scale_at` the current bit-width, flat: shape ``[C]`` per channel, ``[1]`` per tensor."""
        return self.scale_at(w, self.bits).reshape(-1)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if self.bits is None:
            return w
        if torch.is_grad_enabled() and w.requires_grad:
            return self._quantize(w)
        # Evaluation and calibration: the weights are constant across batches, so quantize once.
        # The key changes with any in-place update (_version) or new storage (load, .to()) of
        # whatever the result depends on, with the bit-width and scheme, and with inference mode.
        range_state = self.range if self.learned else self.clip
        key = (w.data_ptr(), w._version, range_state.data_ptr(), range_state._version, self.bits,
               self.granularity, self.pow2, torch.is_inference_mode_enabled())
        if self._frozen is None or self._frozen[0] != key:
            self._frozen = (key, self._quantize(w))
        return self._frozen[1]

    def _quantize(self, w: torch.Tensor) -> torch.Tensor:
        if self.learned:
            return LSQWeight.apply(w, self.range, self.bits, self.narrow_range, self.per_channel, self.pow2)
        qmin, qmax = weight_grid(self.bits, self.narrow_range)
        scale = self.scale_at(w, self.bits)
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
    :class:`LSQActivation`). ``pow2`` rounds the scale up to a power of two (the zero-point is
    rounded on that grid); :meth:`set_scheme` switches it at run time.
    """

    def __init__(self, tracking: str = "running", momentum: float = 0.1, learned: bool = False,
                 pow2: bool = False) -> None:
        super().__init__()
        self.tracking = tracking
        self.momentum = momentum
        self.learned = learned
        self.pow2 = pow2
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

    def set_scheme(self, pow2: bool) -> None:
        """Float or power-of-two scales from now on (the range is unchanged)."""
        self.pow2 = bool(pow2)

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
        return asymmetric_qparams(self.min_val, self.max_val, self.bits, self.pow2)

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
            out = LSQActivation.apply(x, self.min_val, self.max_val, self.bits, self.pow2)
        elif self._on_host(x):
            lo, hi = host_range or (self.min_val.item(), self.max_val.item())
            out = FakeQuantize.apply(x, *host_asymmetric_qparams(lo, hi, self.bits, self.pow2), 0, qmax)
        else:
            out = FakeQuantize.apply(x, *self.qparams(), 0, qmax)
        if self.training and self.tracking == "hindsight" and not self.learned:
            self._track(x, self.momentum)
        return out
