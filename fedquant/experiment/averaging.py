"""A running average of the global model over rounds, evaluated instead of the last model."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

AVERAGES = ("none", "ema", "swa")
State = dict[str, torch.Tensor]


@dataclass
class WeightAverage:
    """Server-side averaging of the global model ``w_r`` from round ``start`` on:

    - ``ema``: ``a_r = decay * a_(r-1) + (1 - decay) * w_r`` (``a = w`` at the first round);
    - ``swa``: ``a_r = (1 / n) * sum of w_start .. w_r`` (a running mean, ``n`` rounds).

    Every float entry of the transported state is averaged (weights, BatchNorm statistics,
    quantizer ranges; the evaluator re-estimates BatchNorm anyway). Training continues from the
    last global model; only evaluation (and checkpoints' ``average``) uses the average. Its state
    is checkpointed, so a resumed run averages exactly as an uninterrupted one.
    """

    kind: str = "none"
    decay: float = 0.9
    start: int = 1
    average: State | None = None
    count: int = 0
    _last_round: int = field(default=0, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in AVERAGES:
            raise ValueError(f"eval.average={self.kind!r} is not valid: allowed are {', '.join(AVERAGES)}")

    def update(self, server_round: int, state: State) -> State:
        """Fold round ``server_round``'s global model in; the state to evaluate."""
        if self.kind == "none" or server_round < self.start:
            return state
        if server_round > self._last_round:  # (a resumed run's restart repeats its last round)
            self._fold(server_round, state)
        return self.current()

    def _fold(self, server_round: int, state: State) -> None:
        self._last_round = server_round
        state = {k: v.detach().double() for k, v in state.items()}
        if self.average is None:
            self.average, self.count = state, 1
        else:
            self.count += 1
            weight = 1.0 - self.decay if self.kind == "ema" else 1.0 / self.count
            for k, v in state.items():
                self.average[k] += weight * (v - self.average[k])

    def current(self) -> State:
        """The average as float32 tensors (kept in float64 between rounds)."""
        return {k: v.float() for k, v in self.average.items()}

    def state_dict(self) -> dict:
        return {"average": self.average, "count": self.count, "last_round": self._last_round}

    def load_state_dict(self, payload: dict) -> None:
        self.average, self.count, self._last_round = payload["average"], payload["count"], payload["last_round"]
