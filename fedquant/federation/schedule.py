"""The client learning rate over rounds: what the server sends each round (exact under resume:
it depends only on the round)."""

from __future__ import annotations

import math
from dataclasses import dataclass

LR_SCHEDULES = ("constant", "cosine", "step")


@dataclass(frozen=True)
class LRSchedule:
    """``lr(r)`` for rounds ``r = 1 .. num_rounds`` from the base rate ``lr``:

    - ``constant``: ``lr``;
    - ``cosine``: ``lr_min + (lr - lr_min) * (1 + cos(pi * (r - 1) / num_rounds)) / 2`` with
      ``lr_min = min_factor * lr`` (round 1 at ``lr``, decaying towards ``lr_min``);
    - ``step``: ``lr * gamma ** floor((r - 1) / step_rounds)``.
    """

    name: str = "constant"
    lr: float = 0.05
    num_rounds: int = 1
    min_factor: float = 0.0
    step_rounds: int = 10
    gamma: float = 0.1

    def __post_init__(self) -> None:
        if self.name not in LR_SCHEDULES:
            raise ValueError(f"client.lr_schedule={self.name!r} is not valid: allowed are {', '.join(LR_SCHEDULES)}")

    def __call__(self, server_round: int) -> float:
        t = max(server_round - 1, 0)
        if self.name == "cosine":
            low = self.min_factor * self.lr
            return low + (self.lr - low) * (1 + math.cos(math.pi * t / self.num_rounds)) / 2
        if self.name == "step":
            return self.lr * self.gamma ** (t // self.step_rounds)
        return self.lr


@dataclass(frozen=True)
class BitSchedule:
    """Which settings of the set B a QAFedAvg round trains at: the warm-start recipes.

    - ``qat_from_round = R``: rounds ``r < R`` train in float (FedAvg: a float warm start of the
      same run), rounds ``r >= R`` at ``B_r``;
    - ``progressive_rounds = P`` (0: off): the lowest bit-widths enter gradually. With the
      quantized settings of B ordered from the most to the least bits, ``b_1 > b_2 > ... > b_k``
      (by weight bits, then activation bits), round ``r >= R`` admits the first::

          n(r) = min(k, 1 + floor((k - 1) (r - R) / P))

      of them, ``B_r = {b in B : b >= b_n(r)}``: the highest alone at round R, all of B from round
      ``R + P`` on. Float settings in B are always admitted.

    It depends only on the round, so a resumed or extended run trains exactly as an uninterrupted
    one (nothing stretches with ``num_rounds``).
    """

    qat_from_round: int = 1
    progressive_rounds: int = 0

    def at(self, server_round: int, bits: list) -> list:
        """``B_r``: the settings of ``bits`` (a list of (w, a) settings, None = float) admitted in
        round ``server_round``, in B's order; ``[FLOAT]`` before ``qat_from_round``."""
        if server_round < self.qat_from_round:
            return [(None, None)]
        quantized = sorted({s for s in bits if s != (None, None)}, key=precision, reverse=True)
        if not self.progressive_rounds or not quantized:
            return list(bits)
        k = len(quantized)
        n = min(k, 1 + (k - 1) * (server_round - self.qat_from_round) // self.progressive_rounds)
        floor = precision(quantized[n - 1])
        return [s for s in bits if s == (None, None) or precision(s) >= floor]

    @property
    def active(self) -> bool:
        return self.qat_from_round > 1 or self.progressive_rounds > 0


def precision(setting) -> tuple[int, int]:
    w, a = setting
    return (w if w is not None else 33, a if a is not None else 33)  # float ranks above any bit-width
