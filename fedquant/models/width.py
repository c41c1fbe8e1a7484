"""Width heterogeneity (HeteroFL: Diao, Ding & Tarokh, ICLR 2021, arXiv 2010.01264).

A client of capacity ratio ``r`` in (0, 1] trains the sub-model made of the first
``k = ceil(r * C)`` channels (units) of every hidden layer of the global model; the model's
inputs and its classifier's outputs stay full. Every parameter and buffer of the sub-model is
therefore the leading block of the global one with the same ``state_dict`` key::

    sub[key] = global[key][:k_0, :k_1, ...]          (k_d = the sub-model's size along dim d)

so the sub-model of any width is cut from the global state by shape alone (:func:`extract`), and
the server averages each global entry over the clients that hold it (:func:`overlap_average`,
or :func:`overlap_fill` followed by any plain weighted average).

HeteroFL's Scaler divides the output of every hidden conv/linear by ``r`` in training mode (the
kept fraction ``r`` of the inputs then sums to the scale of the full layer, as in inverted
dropout) and is the identity in eval mode. It is attached to the module right after that
layer (its norm, or its activation where there is no norm) by :func:`scaled`, which keeps the
``state_dict`` keys and, at ``r = 1``, returns the module untouched.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn

State = Mapping[str, torch.Tensor]


def check_width(width: float) -> float:
    """``width`` as a float, or ValueError unless ``0 < width <= 1``."""
    if not 0 < width <= 1:
        raise ValueError(f"model width={width!r} is not valid: allowed is 0 < width <= 1")
    return float(width)


def sub_width(channels: int, width: float) -> int:
    """``ceil(width * channels)``, rounded to 6 decimals first so that float error
    (``0.3 * 10 = 3.0000000000000004``) does not add a channel."""
    return math.ceil(round(width * channels, 6))


class Scaler(nn.Module):
    """``x / rate`` in training mode, ``x`` itself in eval mode or at ``rate = 1``. No state."""

    def __init__(self, rate: float) -> None:
        super().__init__()
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / self.rate if self.training and self.rate != 1 else x

    def extra_repr(self) -> str:
        return f"rate={self.rate}"


class _ScaledInput:
    """Mixin: ``self.scaler`` on the input, then the module's own forward."""

    scaler: Scaler

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.scaler(x))


class ScaledBatchNorm2d(_ScaledInput, nn.BatchNorm2d):
    """BatchNorm2d of a Scaler's output (see :func:`scaled`)."""


class ScaledGroupNorm(_ScaledInput, nn.GroupNorm):
    """GroupNorm of a Scaler's output (see :func:`scaled`)."""


class ScaledReLU(_ScaledInput, nn.ReLU):
    """ReLU of a Scaler's output (see :func:`scaled`)."""


_SCALED: dict[type[nn.Module], type[nn.Module]] = {
    nn.BatchNorm2d: ScaledBatchNorm2d, nn.GroupNorm: ScaledGroupNorm, nn.ReLU: ScaledReLU}


def scaled(module: nn.Module, rate: float) -> nn.Module:
    """``module`` (a BatchNorm2d, GroupNorm or ReLU: the module right after a hidden layer) with
    a :class:`Scaler` run on its input; ``module`` untouched when ``rate == 1``.

    The class is swapped in place, as ``quantize_model`` does, so the module keeps its
    parameters and ``state_dict`` names and its position in an ``nn.Sequential`` (a Scaler of
    its own there would shift the indices in the keys); the Scaler adds no entry. The Scaler
    is neither a Conv2d nor a Linear, so ``quantize_model`` leaves it alone.
    """
    if rate == 1:
        return module
    module.__class__ = _SCALED[type(module)]
    module.scaler = Scaler(rate)
    return module


def without_scalers(model: nn.Module) -> nn.Module:
    """``model`` with every Scaler set to rate 1: a sub-model for evaluation, whose BatchNorm
    statistics are re-estimated (HeteroFL's static BatchNorm) on what inference will see."""
    for m in model.modules():
        if isinstance(m, Scaler):
            m.rate = 1.0
    return model


def _block(shape: Sequence[int]) -> tuple[slice, ...]:
    return tuple(slice(0, n) for n in shape)


def _check_fits(key: str, sub: torch.Size, full: torch.Size) -> None:
    if len(sub) != len(full) or any(s > f for s, f in zip(sub, full, strict=True)):
        raise ValueError(f"state entry {key!r}: sub-model shape {tuple(sub)} does not fit in the "
                         f"global shape {tuple(full)}")


def extract(global_state: State, sub_state_template: State) -> dict[str, torch.Tensor]:
    """The sub-model's state: ``global[key][:k_0, :k_1, ...]`` for every key of the template,
    ``(k_0, k_1, ...)`` the template entry's shape (a 0-dim entry is copied). Copies, not views.
    """
    out = {}
    for key, template in sub_state_template.items():
        if key not in global_state:
            raise ValueError(f"state entry {key!r} of the sub-model is missing from the global state")
        full = global_state[key]
        _check_fits(key, template.shape, full.shape)
        out[key] = full[_block(template.shape)].clone()
    return out


def _check_replies(global_state: State, replies: Sequence[tuple[State, float]]) -> None:
    for i, (state, weight) in enumerate(replies):
        if weight < 0:
            raise ValueError(f"reply {i}: weight {weight!r} is not valid: allowed is >= 0")
        if state.keys() != global_state.keys():
            diff = sorted(set(state) ^ set(global_state))
            raise ValueError(f"reply {i}: state entries differ from the global state's: {diff[:3]}")
        for key, value in state.items():
            _check_fits(key, value.shape, global_state[key].shape)


def overlap_average(global_state: State, replies: Sequence[tuple[State, float]]) -> dict[str, torch.Tensor]:
    """HeteroFL's aggregation: for every entry ``e`` of every float global tensor,

        m_e = sum_{i holds e} w_i v_ie / sum_{i holds e} w_i

    over the replies ``(sub-state v_i, weight w_i)``, and the global value where no reply with
    a positive weight holds ``e``. Non-float entries (BatchNorm's ``num_batches_tracked``) keep
    the global value. Computed in float64, returned in each entry's dtype.
    """
    _check_replies(global_state, replies)
    out = {}
    for key, full in global_state.items():
        if not full.is_floating_point():
            out[key] = full.clone()
            continue
        num = torch.zeros(full.shape, dtype=torch.float64, device=full.device)
        den = torch.zeros_like(num)
        for state, weight in replies:
            block = _block(state[key].shape)
            num[block] += weight * state[key].to(torch.float64)
            den[block] += weight
        held = den > 0
        mean = num / torch.where(held, den, 1.0)
        out[key] = torch.where(held, mean, full.to(torch.float64)).to(full.dtype)
    return out


def overlap_fill(global_state: State, replies: Sequence[tuple[State, float]]) -> list[dict[str, torch.Tensor]]:
    """Each reply expanded to the global shapes: its own values where it holds an entry, the
    overlap mean ``m_e`` of :func:`overlap_average` elsewhere.

    Then *any* weighted average over all replies with the same weights ``w_i`` (FedAvg, or the
    pseudo-gradient of FedAvgM/FedAdam) lands on ``m_e`` for every entry: with ``W_h`` the
    holders' total weight and ``W_nh`` the others' (``W = W_h + W_nh``),

        sum_i w_i v'_ie / W = (W_h m_e + W_nh m_e) / W = m_e

    since the holders' weighted sum is ``W_h m_e`` by definition of ``m_e``. The identity is
    exact in real arithmetic; in float it holds to rounding. Where nobody holds ``e``, every
    filled reply carries the global value, and so does the average. Non-float entries: the
    reply's values where it holds them, the global's elsewhere.
    """
    mean = overlap_average(global_state, replies)
    filled = []
    for state, _ in replies:
        full = {}
        for key, value in state.items():
            full[key] = mean[key].clone()
            full[key][_block(value.shape)] = value
        filled.append(full)
    return filled
