"""Post-training range setting (min-max, MSE) and BatchNorm re-estimation.

These run once per evaluated bit-width, never per training step.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from .config import ESTIMATORS, check_choice
from .modules import quant_layers
from .quantizers import EPS, asymmetric_qparams, memory_order, symmetric_scale, weight_grid

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


def _mse_act_range(obs: _RangeObserver, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Range ``alpha * [lo, hi]`` minimising the fake-quantization MSE on the sample."""
    x = torch.cat(obs.samples)
    qmax = 2**bits - 1
    best, best_err = 1.0, float("inf")
    for alpha in CLIP_GRID.tolist():
        scale, zp = asymmetric_qparams(obs.lo * alpha, obs.hi * alpha, bits)
        err = (torch.fake_quantize_per_tensor_affine(x, scale, zp.int(), 0, qmax) - x).pow(2).mean().item()
        if err < best_err:
            best, best_err = alpha, err
    return obs.lo * best, obs.hi * best


def _mse_weight_clip(layer: nn.Module) -> torch.Tensor:
    """Per-channel (or per-tensor) clip fraction minimising the weight fake-quantization MSE."""
    wq = layer.weight_quantizer
    w = layer.weight.detach()
    qmin, qmax = weight_grid(wq.bits, wq.narrow_range)
    absmax = wq._absmax(w)
    zp = wq._zero_point
    best_err = torch.full_like(absmax, float("inf"))
    best = torch.ones_like(absmax)
    for alpha in CLIP_GRID.tolist():
        scale = symmetric_scale(absmax * alpha, wq.bits)
        if wq.granularity == "per_tensor":
            wq_hat = torch.fake_quantize_per_tensor_affine(w, scale, zp, qmin, qmax)
            err = (wq_hat - w).pow(2).mean().reshape(1)
        else:
            wq_hat = torch.fake_quantize_per_channel_affine(w, scale, zp, 0, qmin, qmax)
            err = (wq_hat - w).pow(2).flatten(1).mean(1)
        better = err < best_err
        best = torch.where(better, torch.full_like(best, alpha), best)
        best_err = torch.minimum(best_err, err)
    return best


def _batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable[torch.Tensor], estimator: str = "minmax",
              reestimate_bn: bool = False) -> nn.Module:
    """Set activation ranges (and, for ``"mse"``, weight clipping) from data at the current bit-width.

    Runs ``model`` in eval mode over ``batches`` (input tensors) with activation quantization
    switched off while observing, so every quantizer sees float inputs from quantized weights.
    ``"minmax"`` takes the observed range; ``"mse"`` picks the fraction of it (grid of 39 values)
    that minimises the quantization MSE. With ``reestimate_bn`` the same single pass also
    recomputes BatchNorm statistics as exact means over the batches (BN normalises each batch
    with its own statistics meanwhile, as the re-estimated statistics will). Weights are never
    changed. Returns ``model``.
    """
    check_choice(estimator, ESTIMATORS, "estimator")
    layers = list(quant_layers(model))
    if not layers:
        raise ValueError("model has no quantized layer: call fedquant.quant.quantize_model first")
    was_training = model.training
    model.eval()
    bns = _batchnorms(model) if reestimate_bn else []
    saved_momentum = {bn: bn.momentum for bn in bns}
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average = exact mean over the batches
        bn.train()
    for layer in layers:
        wq = layer.weight_quantizer
        if wq.bits is not None and not wq.learned:
            wq.set_clip(_mse_weight_clip(layer) if estimator == "mse" else torch.ones_like(wq.clip))
        layer.input_quantizer.observer = _RangeObserver(keep_sample=estimator == "mse")
    try:
        seen = 0
        for x in batches:
            model(x)
            seen += 1
        if seen == 0:
            raise ValueError("calibrate got no batches: pass at least one input batch")
        for layer in layers:
            aq = layer.input_quantizer
            obs = aq.observer
            if estimator == "mse" and aq.bits is not None:
                lo, hi = _mse_act_range(obs, aq.bits)
            else:
                lo, hi = obs.lo, obs.hi
            aq.min_val.copy_(lo)
            aq.max_val.copy_(torch.maximum(hi, lo + EPS))
    finally:
        for layer in layers:
            layer.input_quantizer.observer = None
        for bn, momentum in saved_momentum.items():
            bn.momentum = momentum
        model.train(was_training)
    return model


@torch.no_grad()
def reestimate_batchnorm(model: nn.Module, batches: Iterable[torch.Tensor]) -> nn.Module:
    """Recompute BatchNorm running statistics as exact averages over ``batches``.

    Quantization shifts the statistics of pre-BN activations, so BN statistics estimated in
    float (or at another bit-width) are re-estimated at the current one (activation ranges stay
    frozen: the quantizers are put in eval mode).
    """
    bns = _batchnorms(model)
    if not bns:
        return model
    was_training = model.training
    model.eval()
    saved = {bn: bn.momentum for bn in bns}
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average = exact mean over the batches
        bn.train()
    try:
        for x in batches:
            model(x)
    finally:
        for bn, momentum in saved.items():
            bn.momentum = momentum
        model.train(was_training)
    return model
