"""Accuracy per width level (HeteroFL sub-models, :mod:`fedquant.models.width`).

The server tests the global model as always and, for every width ``r < 1`` that a device
profile holds, the sub-model cut from the global state (the first ``ceil(r * C)`` channels of
every hidden layer), at fp and at the settings of the profiles of that width. Sub-models are
deployed like the full model (BatchNorm re-estimated on the calibration images: HeteroFL's
static BatchNorm; the training-time Scaler off). Their results are named ``<setting>@<r>``
(e.g. ``w2a2@0.25``), next to the full model's ``<setting>``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..federation.profiles import at_width
from ..models.state import float_state
from ..models.width import extract
from .evaluation import Evaluator


@dataclass
class LevelledEvaluator:
    """An :class:`Evaluator` of the full model plus one per width level (``levels[r]``, whose
    model is the sub-model of width ``r``); everything else is the full model's evaluator's."""

    full: Evaluator
    levels: dict[float, Evaluator]

    def __getattr__(self, name: str):
        if name == "full":  # not set yet (e.g. while unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.full, name)

    def __call__(self, state: dict[str, torch.Tensor]) -> dict[str, dict[str, dict[str, float]]]:
        out = self.full(state)
        for width, evaluator in self.levels.items():
            sub = evaluator(extract(state, float_state(evaluator.model)))
            for split, results in sub.items():
                out[split].update({at_width(name, width): v for name, v in results.items()})
        return out

    def with_data(self, **fields) -> LevelledEvaluator:
        """The same evaluators with other data fields (e.g. ``calibration``), levels included."""
        return LevelledEvaluator(self.full.with_data(**fields), {w: e.with_data(**fields) for w, e in self.levels.items()})

    def model_bytes(self) -> dict[str, int]:
        out = self.full.model_bytes()
        for width, evaluator in self.levels.items():
            out.update({at_width(name, width): n for name, n in evaluator.model_bytes().items()})
        return out
