"""AdaRound: learned up-or-down rounding of the weights, layer by layer (post-training).

Nagel, Amjad, van Baalen, Louizos, Blankevoort, "Up or Down? Adaptive Rounding for Post-Training
Quantization", ICML 2020 (arXiv 2004.10568). On the grid of the weight quantizer's current scale
``s`` (per channel or per tensor, after any MSE clipping), with ``qmin, qmax`` its integer grid::

    W~   = s * clamp(floor(W / s) + h(V), qmin, qmax)
    h(V) = clamp(sigmoid(V) * (zeta - gamma) + gamma, 0, 1),   zeta = 1.1, gamma = -0.1
    min_V  || W x - W~ x^ ||^2  +  lambda * f_reg(V),   f_reg = sum_ij 1 - |2 h(V_ij) - 1|^beta

``x`` is the layer's input in the float model and ``x^`` its input in the model whose earlier
layers already carry their rounded weights (asymmetric reconstruction: the paper's eq. 25 without
the activation function), both with activation quantization off and BatchNorm in eval mode. The
squared error is summed over output channels and averaged over samples (and positions, for
convolutions). ``V`` starts where ``h(V)`` equals the fractional part ``W/s - floor(W/s)``; Adam
optimises it; the regulariser is off for the warm-up, then ``beta`` decays linearly from
``beta[0]`` to ``beta[1]``. The final rounding is ``h = 1`` where ``V >= 0`` (``h(V) >= 1/2``).
Should that hard rounding give a larger output error on the calibration data than
round-to-nearest (V not yet binarised: too few iterations for the learning rate), the layer keeps
round-to-nearest (``stats[layer]["kept"]``).

Exact representability: the quantizer recomputes ``s = clip * max|w| / (2^(b-1) - 1)`` from the
weights it gets, so the largest-magnitude weight(s) of each channel keep round-to-nearest (the top
of the grid) and the rounded weights ``s * q`` are stored. The range ``clip * max|w|`` must stay
``s * (2^(b-1) - 1)`` while ``max|w|`` becomes a grid point, so ``clip`` is rewritten to
``d / max|q|`` (``d = 2^(b-1) - 1``: 1, or ``d / (d+1)`` where the full grid's ``-2^(b-1)`` is
the largest magnitude), nudged by a few ulps if the quantizer's float32 formula needs it to give
``s`` back bit for bit. Then ``weight_quantizer(weight) == weight`` and its scale is ``s``,
exactly; both are checked (RuntimeError otherwise). Setting
weight ranges afterwards (:func:`set_weight_ranges`, or :func:`calibrate` with a
``weight_range``) overwrites ``clip`` and moves the grid: calibrate with ``weight_range=None``.

Power-of-two scales: AdaRound learns the rounding with the scale fixed, and the scale it starts
from is the quantizer's, already ``2^ceil(log2 s)``; the clip it writes back is checked to give
that same power of two through the quantizer's full formula (pow2 included), so the scales after
AdaRound are the same powers of two (a scheme's granularity is kept the same way).
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .grids import symmetric_scale, weight_grid
from .modules import QuantConv2d, quant_layers
from .quantizers import WeightQuantizer

ZETA, GAMMA = 1.1, -0.1
CHUNK = 256  # samples per forward when computing targets and errors over all cached inputs


@dataclass
class AdaRoundConfig:
    """AdaRound hyper-parameters (per layer). The paper runs 10k iterations of batch 32; 500 is
    a cheap default. Adam moves each ``V`` by about ``lr`` per step and ``h(V)`` saturates at
    ``|V| ~ 2.4``, so ``lr * iterations`` of at least ~2 is needed for the rounding to settle
    (the paper: 10); at 500 iterations ``lr=1e-2`` does markedly better than 1e-3. Layers whose
    effective weight bits exceed ``max_bits`` (e.g. first/last layers pinned at 8 bits) keep
    round-to-nearest: at 8 bits the rounding error is negligible and AdaRound would only cost
    time."""

    iterations: int = 500
    batch_size: int = 64  # rows (linear) or images (conv) of the cached inputs per step
    reg_weight: float = 0.01  # lambda
    beta: tuple[float, float] = (20.0, 2.0)
    warmup: float = 0.2  # fraction of the iterations without the regulariser
    lr: float = 1e-2  # Adam on V (see the class docstring)
    max_bits: int = 7
    seed: int = 0


def rectified_sigmoid(v: torch.Tensor) -> torch.Tensor:
    """``h(V) = clamp(sigmoid(V) * (zeta - gamma) + gamma, 0, 1)``."""
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def round_regularizer(h: torch.Tensor, beta: float) -> torch.Tensor:
    """``f_reg = sum 1 - |2h - 1|^beta`` with ``h = h(V)``: 0 once every ``h`` is 0 or 1."""
    return (1 - (2 * h - 1).abs().pow(beta)).sum()


def beta_at(step: int, config: AdaRoundConfig) -> float | None:
    """None during the warm-up, then linear from ``beta[0]`` to ``beta[1]`` at the last step."""
    start = int(config.warmup * config.iterations)
    if step < start:
        return None
    progress = (step - start) / max(1, config.iterations - 1 - start)
    return config.beta[0] + (config.beta[1] - config.beta[0]) * progress


class _StopForward(Exception):
    """Raised by a hook once it has what it needs: the rest of the forward pass is skipped."""


@torch.no_grad()
def run_to_layer(model: nn.Module, layer: nn.Module, batches: Iterable[torch.Tensor],
                 record: Callable[[torch.Tensor], None], output: bool = False) -> None:
    """Run ``model`` on each batch only up to ``layer``; ``record`` gets its input (or output)."""
    def hook(module: nn.Module, args: tuple, out: torch.Tensor | None = None) -> None:
        record(out if output else args[0])
        raise _StopForward

    handle = layer.register_forward_hook(hook) if output else layer.register_forward_pre_hook(hook)
    try:
        for x in batches:
            with contextlib.suppress(_StopForward):
                model(x)
    finally:
        handle.remove()


def _inputs(model: nn.Module, layer: nn.Module, batches: list[torch.Tensor]) -> torch.Tensor:
    seen: list[torch.Tensor] = []
    run_to_layer(model, layer, batches, seen.append)
    x = torch.cat(seen)
    return x if isinstance(layer, QuantConv2d) else x.reshape(-1, x.shape[-1])  # linear: rows


def adaround(model: nn.Module, batches: list[torch.Tensor],
             config: AdaRoundConfig | None = None) -> dict[str, dict]:
    """Learn the rounding of every quantized layer (definition order) whose weight quantizer is
    on at ``<= config.max_bits``, and write the rounded weights ``s * q`` into ``layer.weight``
    (see the module docstring). ``batches`` are normalised input tensors. The model's BatchNorm
    statistics and activation ranges are untouched. Returns, per layer name: the output MSE
    (mean over elements, on the calibration inputs ``x^``) of round-to-nearest and of AdaRound's
    rounding, which one was ``kept``, the fraction of free weights rounded up, the seconds."""
    config = config or AdaRoundConfig()
    layers = list(quant_layers(model))
    reference = copy.deepcopy(model)  # the float model, with the original weights, gives x
    ref_layers = list(quant_layers(reference))
    for ref in ref_layers:
        ref.weight_quantizer.set_bits(None)
        ref.input_quantizer.set_bits(None)
    names = {m: n for n, m in model.named_modules()}
    act_bits = [layer.input_quantizer.bits for layer in layers]
    generator = torch.Generator().manual_seed(config.seed)
    was_training = model.training
    model.eval()
    reference.eval()
    stats = {}
    try:
        for layer in layers:
            layer.input_quantizer.set_bits(None)
        for layer, ref in zip(layers, ref_layers, strict=True):
            bits = layer.weight_quantizer.bits
            if bits is None or bits > config.max_bits:
                continue
            x_fp, x_q = _inputs(reference, ref, batches), _inputs(model, layer, batches)
            stats[names[layer]] = _adaround_layer(layer, x_fp, x_q, config, generator)
    finally:
        for layer, bits in zip(layers, act_bits, strict=True):
            layer.input_quantizer.set_bits(bits)
        model.train(was_training)
    return stats


def _adaround_layer(layer: nn.Module, x_fp: torch.Tensor, x_q: torch.Tensor,
                    config: AdaRoundConfig, generator: torch.Generator) -> dict:
    start_time = time.perf_counter()
    wq: WeightQuantizer = layer.weight_quantizer
    w = layer.weight.detach().clone()
    qmin, qmax = weight_grid(wq.bits, wq.narrow_range)
    s = wq.scale(w).detach()  # a learned range is a parameter
    s_b = s.reshape(wq.view) if wq.granularity == "per_channel" else s
    scaled = w * s_b.reciprocal()  # as the quantizer computes it
    floor = scaled.floor()
    absmax = wq.absmax(w)
    top = w.abs() == (absmax.reshape(wq.view) if wq.granularity == "per_channel" else absmax)
    nearest = scaled.round() - floor  # round-to-nearest's h; fixed for the largest magnitudes
    v = torch.logit((scaled - floor - GAMMA) / (ZETA - GAMMA)).requires_grad_()

    def rounded(h: torch.Tensor) -> torch.Tensor:  # q = clamp(floor(W/s) + h, qmin, qmax)
        return torch.clamp(floor + h, qmin, qmax)

    def forward(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return layer._conv_forward(x, weight, None) if isinstance(layer, QuantConv2d) else F.linear(x, weight)

    with torch.no_grad():
        target = torch.cat([forward(x, w) for x in x_fp.split(CHUNK)])  # W x
        mse_rtn = _mse(forward, x_q, s_b * rounded(nearest), target)
    optimizer = torch.optim.Adam([v], lr=config.lr)
    for step in range(config.iterations):
        idx = torch.randint(len(x_q), (config.batch_size,), generator=generator).to(x_q.device)
        h = torch.where(top, nearest, rectified_sigmoid(v))
        loss = (forward(x_q[idx], s_b * rounded(h)) - target[idx]).pow(2).sum(1).mean()
        beta = beta_at(step, config)
        if beta is not None:
            loss = loss + config.reg_weight * round_regularizer(h, beta)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    h = (v.detach() >= 0).to(w.dtype)
    q = rounded(torch.where(top, nearest, h))
    mse = _mse(forward, x_q, s_b * q, target)
    kept = "adaround" if mse <= mse_rtn else "nearest"  # V not binarised: too few iterations * lr
    _write_exact(layer, q if kept == "adaround" else rounded(nearest), s)
    return {"bits": wq.bits, "mse_rtn": mse_rtn, "mse_adaround": mse, "kept": kept,
            "rounded_up": h[~top].mean().item(), "seconds": time.perf_counter() - start_time}


@torch.no_grad()
def _mse(forward: Callable, x: torch.Tensor, weight: torch.Tensor, target: torch.Tensor) -> float:
    pairs = zip(x.split(CHUNK), target.split(CHUNK), strict=True)
    sse = sum((forward(xc, weight) - tc).pow(2).sum() for xc, tc in pairs)
    return (sse / target.numel()).item()


@torch.no_grad()
def _write_exact(layer: nn.Module, q: torch.Tensor, s: torch.Tensor) -> None:
    """Store ``s * q`` and the clip that makes the quantizer recompute ``s`` from it; raise
    unless the quantizer then reproduces the weights bit for bit."""
    wq: WeightQuantizer = layer.weight_quantizer
    layer.weight.copy_(q * (s.reshape(wq.view) if wq.granularity == "per_channel" else s))
    if not wq.learned:  # a learned range does not depend on the weights
        wq.set_clip(_exact_clip(wq, q, s))
    if not (torch.equal(wq.scale(layer.weight), s) and torch.equal(wq(layer.weight), layer.weight)):
        raise RuntimeError("adaround: the rounded weights are not exactly representable")


def _exact_clip(wq: WeightQuantizer, q: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Per channel the clip ``c`` closest to ``d / max|q|`` (within 8 ulps) for which the
    quantizer's ``symmetric_scale(max|s * q| * c)`` (with its ``pow2`` rounding) is ``s`` bit for
    bit (``d = 2^(b-1) - 1``). ``d / max|q|`` itself has done it for every scale the quantizer
    produced in our tests."""
    d = 2 ** (wq.bits - 1) - 1
    top = wq.absmax(q)  # max |q|; max|s * q| == s * max|q| (rounding is monotone)
    clip0 = torch.where(top > 0, d / top.clamp_min(1.0), torch.ones_like(top))
    best, found = clip0.clone(), torch.zeros_like(s, dtype=torch.bool)
    for ulps in (0, 1, -1, 2, -2, 3, -3, 4, -4, 5, -5, 6, -6, 7, -7, 8, -8):
        clip = _nudge(clip0, ulps)
        hit = ~found & (symmetric_scale(s * top * clip, wq.bits, wq.pow2) == s)
        best, found = torch.where(hit, clip, best), found | hit
        if found.all():
            return best
    raise RuntimeError("adaround: found no clip that reproduces the scale exactly")


def _nudge(x: torch.Tensor, ulps: int) -> torch.Tensor:
    """``x`` moved by ``ulps`` representable floats (up if positive)."""
    direction = torch.full_like(x, math.copysign(math.inf, ulps))
    for _ in range(abs(ulps)):
        x = torch.nextafter(x, direction)
    return x
