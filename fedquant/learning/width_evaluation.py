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
from .evaluation import Evaluator, SettingHook


def _counted(hook: SettingHook | None, width: float | None, before: int, total: int) -> SettingHook | None:
    """``hook`` for one evaluator of several: its settings numbered after ``before`` others, of
    ``total``, named at ``width`` (None: the full model)."""
    if hook is None:
        return None
    return lambda name, i, _: hook(name if width is None else at_width(name, width), before + i, total)


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

    def __call__(self, state: dict[str, torch.Tensor],
                 on_setting: SettingHook | None = None) -> dict[str, dict[str, dict[str, float]]]:
        """As :meth:`Evaluator.__call__`; ``on_setting`` counts the levels' settings after the
        full model's (``w2a2@0.25``: setting ``i`` of them all)."""
        total = len(self.full.settings) + sum(len(e.settings) for e in self.levels.values())
        out = self.full(state, _counted(on_setting, None, 0, total))
        done = len(self.full.settings)
        for width, evaluator in self.levels.items():
            sub = evaluator(extract(state, float_state(evaluator.model)), _counted(on_setting, width, done, total))
            done += len(evaluator.settings)
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
