"""Local (quantization-aware) training of one model on one data partition.

Used by the Flower ClientApp and by benchmarks; plain PyTorch. The hot loop has no host syncs:
the loss is accumulated on the device and read once at the end.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..data import Dataset
from ..data.augment import random_crop_flip
from ..federation.bitwidths import FLOAT, Setting, setting_name
from ..quant import (
    LayerBits,
    apply_bits,
    gradient_l1_loss,
    kurtosis_loss,
    quant_layers,
    set_bitwidth,
)
from ..quant.oscillation import FrozenWeights, OscillationCounter, dampening_loss, tracked_layers
from .batches import memory_format_for, to_input

REGULARIZERS = ("none", "kure", "gradl1")


@dataclass
class TrainConfig:
    """Local optimisation: SGD with momentum, optional regulariser and FedProx proximal term."""

    epochs: int = 1
    batch_size: int = 32
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0
    regularizer: str = "none"
    reg_weight: float = 0.0
    proximal_mu: float = 0.0
    distill_weight: float = 0.0  # in-place distillation from the float forward of the same batch
    distill_temperature: float = 2.0
    augment: bool = False  # random crop (4-pixel padding) and horizontal flip of every image batch
    dampen_weight: float = 0.0  # oscillation dampening (this round's lambda)
    track_bits: int | None = None  # count weight oscillations on this grid (None: do not count)


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * KL(softmax(teacher / T) || softmax(student / T))``, averaged over the batch (the
    ``T^2`` keeps the gradient's scale independent of ``T``, Hinton et al. 2015)."""
    t = temperature
    return F.kl_div(F.log_softmax(student / t, dim=1), F.log_softmax(teacher / t, dim=1), reduction="batchmean",
                    log_target=True) * (t * t)


def batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def float_logits(model: nn.Module, x: torch.Tensor, setting: Setting | LayerBits, bns: list | None = None) -> torch.Tensor:
    """The model's float logits on ``x`` in training mode (BatchNorm on the batch's statistics,
    as the quantized forward), leaving BatchNorm's running statistics (``bns``: the model's
    BatchNorm layers, found once by the caller) as they were; the model is switched back to
    ``setting``."""
    bns = batchnorms(model) if bns is None else bns
    saved = [(bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone()) for bn in bns]
    set_bitwidth(model, None, None)
    try:
        return model(x)
    finally:
        apply_bits(model, setting)
        for bn, (mean, var, count) in zip(bns, saved, strict=True):
            bn.running_mean.copy_(mean)
            bn.running_var.copy_(var)
            bn.num_batches_tracked.copy_(count)


@dataclass
class TrainResult:
    num_examples: int
    loss: float  # mean task loss (cross-entropy) over all local steps
    steps: int
    bits_used: Counter  # setting name -> steps trained at it (per_layer sampling: unpinned layer-steps)
    oscillations: OscillationCounter | None = None  # with ``track_bits``: the counts over ``steps``


def train_local(model: nn.Module, data: Dataset, indices: torch.Tensor, cfg: TrainConfig,
                next_setting: Callable[[], Setting | LayerBits], seed: int,
                device: torch.device | str = "cpu", frozen: dict[str, torch.Tensor] | None = None) -> TrainResult:
    """Train ``model`` in place on ``data.train_x[indices]``.

    ``next_setting`` is called before every step to get the (weight, act) bits of that step
    (return ``FLOAT`` for plain float training, a constant for fixed-bit QAT), or one setting per
    quantized layer (a :class:`~fedquant.quant.LayerBits`; ``bits_used`` then counts the draws of
    the unpinned layers, which run them; an all-float draw is a float step). ``seed`` fixes
    the batch order. The regulariser adds ``reg_weight * R``: KURE ``R = mean_l (K_l - 1.8)^2``,
    gradient-L1 ``R = ||dCE/dW||_1``; FedProx adds ``mu/2 ||w - w_global||^2``. In-place
    distillation (``distill_weight > 0``) adds to every quantized step
    ``distill_weight * T^2 * KL(softmax(z_fp / T) || softmax(z_q / T))``, ``z_fp`` the same
    model's float logits on the same batch (one extra forward, no gradient, BatchNorm statistics
    untouched). ``augment``: the CIFAR recipe (:func:`fedquant.data.augment.random_crop_flip`),
    seeded by ``seed + 1``. Oscillations (:mod:`fedquant.quant.oscillation`): ``dampen_weight``
    adds ``lambda * sum_w (sg(q(w)) - clip(w, s n, s p))^2`` over the unpinned layers at the step's
    weight grid; ``track_bits`` counts every weight's oscillations on that grid after each step;
    ``frozen`` (bool masks by weight name) keeps those entries at their loaded values.
    """
    x_all, y_all = data.train_x[indices], data.train_y[indices]
    n = len(indices)
    fmt = memory_format_for(model)
    model.to(device, memory_format=fmt).train()
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    anchor = [p.detach().clone() for p in model.parameters()] if cfg.proximal_mu > 0 else None
    gen = torch.Generator().manual_seed(seed)
    augment_gen = torch.Generator().manual_seed(seed + 1)  # its own stream: batch order unchanged
    bns = batchnorms(model) if cfg.distill_weight else None
    layers = tracked_layers(model) if cfg.dampen_weight or cfg.track_bits else {}
    counter = OscillationCounter(layers, cfg.track_bits) if cfg.track_bits and layers else None
    keep = FrozenWeights(model, frozen) if frozen else None
    steps_at: Counter = Counter()  # setting -> steps
    unpinned = [not layer.pinned for layer in quant_layers(model)]
    current = None
    loss_sum = torch.zeros((), device=device)
    steps = 0
    for _ in range(cfg.epochs):
        for batch in torch.randperm(n, generator=gen).split(cfg.batch_size):
            setting = next_setting()
            if setting != current:  # switching walks every layer: only when the setting changes
                apply_bits(model, setting)
                current = setting
            if isinstance(setting, LayerBits):
                steps_at.update(s for s, free in zip(setting, unpinned, strict=True) if free)
                quantized = any(s != FLOAT for s in setting)
            else:
                steps_at[setting] += 1
                quantized = setting != FLOAT
            raw = x_all[batch]
            if cfg.augment:
                raw = random_crop_flip(raw.to(device, non_blocking=True), augment_gen)
            xb = to_input(data, raw, device, fmt)
            yb = y_all[batch].to(device, non_blocking=True)
            # the teacher first: its BatchNorm bookkeeping must not touch what the student's backward saved
            teacher = float_logits(model, xb, setting, bns) if cfg.distill_weight and quantized else None
            logits = model(xb)
            task = F.cross_entropy(logits, yb)
            loss = task
            if teacher is not None:
                loss = loss + cfg.distill_weight * distillation_loss(logits, teacher, cfg.distill_temperature)
            if cfg.regularizer == "kure" and cfg.reg_weight:
                loss = loss + cfg.reg_weight * kurtosis_loss(model)
            elif cfg.regularizer == "gradl1" and cfg.reg_weight:
                loss = loss + cfg.reg_weight * gradient_l1_loss(task, model)
            if cfg.dampen_weight and quantized:
                damp = dampening_loss(layers)
                if damp is not None:
                    loss = loss + cfg.dampen_weight * damp
            if anchor is not None:
                prox = sum((p - a).pow(2).sum() for p, a in zip(model.parameters(), anchor, strict=True))
                loss = loss + 0.5 * cfg.proximal_mu * prox
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if keep is not None:
                keep.restore()
            if counter is not None:  # float steps are not counted
                counter.update() if quantized else counter.skip()
            loss_sum += task.detach()
            steps += 1
    bits_used = Counter({setting_name(s): k for s, k in steps_at.items()})
    return TrainResult(n, float(loss_sum) / max(steps, 1), steps, bits_used, counter)
