"""Post-training range setting and BatchNorm re-estimation, once per evaluated bit-width.

Weights (symmetric, ``s = clip * max|w| / (2^(b-1) - 1)``): ``max`` takes ``clip = 1``; ``mse``
picks per channel the clip in a 39-value grid (0.05 ... 1) minimising ``||w_hat - w||^2``.
Activations (asymmetric ``[lo, hi]``, observed on calibration data): ``minmax`` takes the
observed extremes; ``mse`` scales them by the fraction in the same grid that minimises the
fake-quantization MSE on a sample; ``percentile`` takes the ``p``-th and ``(100-p)``-th
percentiles of the sample (``p`` = 99.99 by default). Never run per training step.

Every range is turned into a scale by the quantizer's own formula, so a scheme's rules hold for
all of them: with power-of-two scales (``pow2``) the ``max``, ``minmax`` and ``percentile`` ranges
give ``2^ceil(log2 s)`` of their float scale, and the MSE searches score each candidate on its
power-of-two grid (so they pick the best snapped range); per tensor, the weight MSE is one fraction
for the whole tensor.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch
from torch import nn

from .config import ACT_RANGES, WEIGHT_RANGES, check_choice
from .fake_quantize import memory_order
from .grids import asymmetric_qparams
from .modules import quant_layers

CLIP_GRID = torch.linspace(0.05, 1.0, 39)  # candidate fractions of the observed range (step 0.025)
SAMPLE_PER_BATCH = 4096  # activation values kept per batch and quantizer for the MSE search


class _RangeObserver:
    """Collects the global min/max of a quantizer's inputs and, for MSE, a strided sample."""

    def __init__(self, keep_sample: bool) -> None:
        self.lo = self.hi = None
        self.keep_sample = keep_sample
        self.samples: list[torch.Tensor] = []

    def __call__(self, x: torch.Tensor) -> None:
        x = x.detach()
        lo, hi = torch.aminmax(memory_order(x))
        self.lo = lo if self.lo is None else torch.minimum(self.lo, lo)
        self.hi = hi if self.hi is None else torch.maximum(self.hi, hi)
        if self.keep_sample:
            flat = x.reshape(-1)
            self.samples.append(flat[:: max(1, flat.numel() // SAMPLE_PER_BATCH)].float())


def _percentile_act_range(obs: _RangeObserver, percentile: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``[q_(100-p), q_p]`` of the sampled values (the ``p``-th percentile and its mirror)."""
    x = torch.cat(obs.samples)
    q = torch.quantile(x, torch.tensor([1 - percentile / 100, percentile / 100], dtype=x.dtype))
    return q[0], q[1]


def _mse_act_range(obs: _RangeObserver, bits: int, pow2: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Range ``alpha * [lo, hi]`` minimising the fake-quantization MSE on the sample (on the
    power-of-two grid of each candidate with ``pow2``)."""
    x = torch.cat(obs.samples)
    qmax = 2**bits - 1
    best, best_err = 1.0, float("inf")
    for alpha in CLIP_GRID.tolist():
        scale, zp = asymmetric_qparams(obs.lo * alpha, obs.hi * alpha, bits, pow2)
        err = (torch.fake_quantize_per_tensor_affine(x, scale, zp.int(), 0, qmax) - x).pow(2).mean().item()
        if err < best_err:
            best, best_err = alpha, err
    return obs.lo * best, obs.hi * best


def _mse_weight_clip(layer: nn.Module) -> torch.Tensor:
    """Per-channel (or per-tensor) clip fraction minimising the weight fake-quantization MSE."""
    wq = layer.weight_quantizer
    w = layer.weight.detach()
    best_err = torch.full_like(wq.clip, float("inf"))
    best = torch.ones_like(wq.clip)
    for alpha in CLIP_GRID.tolist():
        err = (wq.quantize_at_clip(w, torch.full_like(best, alpha)) - w).pow(2)
        err = err.mean().reshape(1) if wq.granularity == "per_tensor" else err.flatten(1).mean(1)
        better = err < best_err
        best = torch.where(better, torch.full_like(best, alpha), best)
        best_err = torch.minimum(best_err, err)
    return best


@contextlib.contextmanager
def _reestimating_batchnorm(model: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Inside: the model in eval mode except BatchNorm layers, whose statistics are reset and
    accumulated as exact means over the batches run (momentum None); restored on exit."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)] if enabled else []
    was_training = model.training
    model.eval()
    saved = {bn: bn.momentum for bn in bns}
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average = exact mean over the batches
        bn.train()
    try:
        yield
    finally:
        for bn, momentum in saved.items():
            bn.momentum = momentum
        model.train(was_training)


@torch.no_grad()
def set_weight_ranges(model: nn.Module, method: str = "max") -> nn.Module:
    """Set every quantized layer's weight clip at its current bit-width: 1 (``max``) or the
    per-channel MSE-optimal fraction (``mse``). Layers in float or with learned ranges keep theirs."""
    check_choice(method, WEIGHT_RANGES, "weight_range")
    for layer in quant_layers(model):
        wq = layer.weight_quantizer
        if wq.bits is not None and not wq.learned:
            wq.set_clip(_mse_weight_clip(layer) if method == "mse" else torch.ones_like(wq.clip))
    return model


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable[torch.Tensor], act_range: str = "minmax",
              reestimate_bn: bool = False, weight_range: str | None = "max", percentile: float = 99.99) -> nn.Module:
    """Set weight ranges (:func:`set_weight_ranges`, skipped when ``weight_range`` is None) and
    activation ranges from data at the current bit-width.

    Runs ``model`` in eval mode over ``batches`` (input tensors) with activation quantization
    switched off while observing, so every quantizer sees float inputs from quantized weights;
    ``act_range`` is ``minmax``, ``mse`` or ``percentile`` (module docstring). With
    ``reestimate_bn`` the same single pass also recomputes BatchNorm statistics as exact means
    over the batches (BN normalises each batch with its own statistics meanwhile, as the
    re-estimated statistics will). Weights are never changed. Returns ``model``.
    """
    check_choice(act_range, ACT_RANGES, "act_range")
    if not 50.0 < float(percentile) <= 100.0:
        raise ValueError(f"percentile={percentile!r} is out of range: allowed is a number in (50, 100]")
    layers = list(quant_layers(model))
    if not layers:
        raise ValueError("model has no quantized layer: call fedquant.quant.quantize_model first")
    if weight_range is not None:
        set_weight_ranges(model, weight_range)
    observers = {}
    for layer in layers:
        observers[layer] = _RangeObserver(keep_sample=act_range != "minmax")
        layer.input_quantizer.observe(observers[layer])
    try:
        with _reestimating_batchnorm(model, reestimate_bn):
            seen = 0
            for x in batches:
                model(x)
                seen += 1
        if seen == 0:
            raise ValueError("calibrate got no batches: pass at least one input batch")
        for layer, obs in observers.items():
            aq = layer.input_quantizer
            if act_range == "mse" and aq.bits is not None:
                aq.set_range(*_mse_act_range(obs, aq.bits, aq.pow2))
            elif act_range == "percentile" and aq.bits is not None:
                aq.set_range(*_percentile_act_range(obs, percentile))
            else:
                aq.set_range(obs.lo, obs.hi)
    finally:
        for layer in layers:
            layer.input_quantizer.observe(None)
    return model


@torch.no_grad()
def reestimate_batchnorm(model: nn.Module, batches: Iterable[torch.Tensor]) -> nn.Module:
    """Recompute BatchNorm running statistics as exact averages over ``batches``.

    Quantization shifts the statistics of pre-BN activations, so BN statistics estimated in
    float (or at another bit-width) are re-estimated at the current one (activation ranges stay
    frozen: the quantizers are put in eval mode).
    """
    with _reestimating_batchnorm(model):
        for x in batches:
            model(x)
    return model
