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
