"""Oscillation dampening and iterative weight freezing across a federation: the server side.

The client side (counting flips, the dampening loss, keeping frozen weights fixed) is
:mod:`fedquant.quant.oscillation`, which states the paper's equations. The federated design:

- **dampening weight per round**: ``lambda_r = lambda * (1 - cos(pi * (r - 1) / (R - 1))) / 2``,
  annealed from 0 in round 1 to ``lambda`` in the last round ``R`` (the paper anneals lambda with
  a cosine over training); sent to the clients with the round's train config, like the lr.
- **one reference grid**: every QAT client counts oscillations on the grid of ``ref_bits``, the
  lowest weight bit-width the federation trains, whatever bit-widths its steps draw.
- **pooled frequency**: client ``i`` reports per weight entry ``e`` its oscillation count
  ``o_i(e)``, the sum of its integer values ``z_i(e)`` and its number of steps ``T_i``. The server
  pools them, ``f_r(e) = sum_i o_i(e) / sum_i T_i`` (oscillations per local step), and keeps an EMA
  over rounds ``F_r = mu f_r + (1 - mu) F_(r-1)`` (``F_0 = 0``).
- **freezing**: entries with ``F_r(e) > f_th`` freeze, for good, in the bin of their most frequent
  integer ``k = round(sum_i z_i(e) / sum_i T_i)`` (the pooled mean of the integer values, which
  for a weight flipping between two integers rounds to the one it sat on longer): the latent
  value becomes the aggregated weight clamped into the inner half of that bin,
  ``v(e) = clamp(w(e), (k - 1/4) s_ref, (k + 1/4) s_ref)``, ``s_ref`` the reference scale of the
  aggregated weight: the scale its weight quantizer has at ``ref_bits``,
  ``s_ref = clip * max|w| / (2^(b-1) - 1)`` (:func:`fedquant.quant.grids.weight_scale`, the
  formula the clients quantize and count with), ``clip`` the aggregated
  ``<layer>.weight_quantizer.clip`` (:func:`clip_key`). On the reference grid the weight is then ``k`` with a quarter step of
  margin against scale drift, and it moves as little as that allows, so the other bit-widths
  keep nearly the trained value (the paper, with one bit-width, fixes the integer itself;
  snapping the latent weight to ``k s_ref`` would move it by up to half a reference step at
  every bit-width). The server broadcasts the frozen masks with each round's model; clients
  restore frozen entries after every local step, and the server writes ``v`` over every
  aggregate, so frozen entries survive any server optimizer (FedAdam's moments included). Mask,
  values and ``F`` are checkpointed with the server state.

Simplifications, stated: the threshold is constant (the paper anneals it); each client's counter
starts afresh every round (a reversal across two rounds of one client is not counted); only
quantized local steps are counted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..quant.grids import weight_grid, weight_scale


def clip_key(weight_name: str) -> str:
    """The state-dict name of the clip of the weight quantizer next to ``weight_name``:
    ``<layer>.weight`` -> ``<layer>.weight_quantizer.clip``."""
    if not weight_name.endswith("weight"):
        raise ValueError(f"{weight_name!r} is not the name of a layer's weight")
    return weight_name + "_quantizer.clip"


@dataclass(frozen=True)
class OscillationPlan:
    """The oscillation options of a run (``client.dampen_weight``, ``client.freeze_threshold``,
    ``client.freeze_momentum``) and the reference grid, from the config."""

    dampen_weight: float
    freeze_threshold: float
    freeze_momentum: float
    ref_bits: int
    num_rounds: int
    narrow_range: bool = True
    per_channel: bool = True
    pow2: bool = False  # the run's scheme: power-of-two scales (grids.pow2_scale)

    @property
    def freezing(self) -> bool:
        return self.freeze_threshold > 0

    def dampen_at(self, server_round: int) -> float:
        """``lambda_r``: the cosine ramp from 0 (round 1) to ``dampen_weight`` (the last round)."""
        if self.num_rounds <= 1:
            return self.dampen_weight
        t = (server_round - 1) / (self.num_rounds - 1)
        return self.dampen_weight * (1 - math.cos(math.pi * min(max(t, 0.0), 1.0))) / 2

    def reference_scale(self, weight: torch.Tensor, clip: torch.Tensor) -> torch.Tensor:
        """``s_ref = clip * max|w| / (2^(b-1) - 1)`` at ``ref_bits``: the scale the weight's quantizer
        (with the clip fractions ``clip``) has at ``ref_bits``, shaped to broadcast over ``weight``."""
        channels = weight.shape[0] if self.per_channel else 1
        if clip.numel() != channels:
            raise ValueError(f"clip has {clip.numel()} entries, the weight's quantizer {channels}")
        s = weight_scale(weight, clip.reshape(channels), self.ref_bits, self.per_channel, self.pow2)
        return s.reshape((-1,) + (1,) * (weight.dim() - 1)) if self.per_channel else s


@dataclass
class FreezeState:
    """``F`` (pooled oscillation frequency EMA), the frozen masks and the frozen values, per
    tracked weight name."""

    plan: OscillationPlan
    frequency: dict[str, torch.Tensor] = field(default_factory=dict)
    frozen: dict[str, torch.Tensor] = field(default_factory=dict)  # bool masks
    values: dict[str, torch.Tensor] = field(default_factory=dict)

    def update(self, counts: dict[str, torch.Tensor], integer_sums: dict[str, torch.Tensor], steps: int,
               weights: dict[str, torch.Tensor], clips: dict[str, torch.Tensor]) -> None:
        """Pool one round's client statistics (already summed over clients, ``steps`` summed too)
        and freeze the entries whose frequency EMA passes the threshold, in the bins of the
        reference grid of the aggregated ``weights`` and their quantizers' aggregated ``clips``
        (both by weight name; a clip is the state's :func:`clip_key` entry; see the module
        docstring)."""
        if steps <= 0:
            return
        mu = self.plan.freeze_momentum
        qmin, qmax = weight_grid(self.plan.ref_bits, self.plan.narrow_range)
        for name, count in counts.items():
            rate = count.double() / steps
            previous = self.frequency.get(name, torch.zeros_like(rate))
            self.frequency[name] = (mu * rate + (1 - mu) * previous).float()
            old = self.frozen.get(name, torch.zeros_like(count, dtype=torch.bool))
            new = (self.frequency[name] > self.plan.freeze_threshold) & ~old
            if bool(new.any()):
                w = weights[name].float()
                integer = torch.round(integer_sums[name].double() / steps).clamp_(qmin, qmax).float()
                s = self.plan.reference_scale(w, clips[name].float())
                value = torch.minimum(torch.maximum(w, (integer - 0.25) * s), (integer + 0.25) * s)
                self.values[name] = torch.where(new, value, self.values.get(name, torch.zeros_like(w)))
                self.frozen[name] = old | new

    def enforce(self, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``weights`` with every frozen entry set to its frozen value (a new dict)."""
        out = dict(weights)
        for name, mask in self.frozen.items():
            out[name] = torch.where(mask, self.values[name].to(weights[name].dtype), weights[name])
        return out

    def frozen_share(self) -> float:
        """The share of tracked weight entries frozen so far."""
        total = sum(f.numel() for f in self.frequency.values())
        return sum(int(m.sum()) for m in self.frozen.values()) / total if total else 0.0

    def to_dict(self) -> dict:
        return {"frequency": dict(self.frequency), "frozen": dict(self.frozen), "values": dict(self.values)}

    def load(self, state: dict) -> None:
        self.frequency = dict(state.get("frequency", {}))
        self.frozen = {k: v.bool() for k, v in state.get("frozen", {}).items()}
        self.values = dict(state.get("values", {}))
