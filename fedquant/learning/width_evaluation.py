"""Accuracy per level: width (HeteroFL sub-models, :mod:`fedquant.models.width`) and scheme.

The server tests the global model as always and, for every other :class:`~fedquant.federation.
profiles.Level` that a device profile holds, its model: for a width ``r < 1`` the sub-model cut
from the global state (the first ``ceil(r * C)`` channels of every hidden layer), at fp and at
the settings of the profiles of that width; for a scheme of its own (weight granularity, float or
power-of-two scales), the model under that scheme (:func:`fedquant.quant.set_scheme`), at the
profiles' settings. Sub-models are deployed like the full model (BatchNorm re-estimated on the
calibration images: HeteroFL's static BatchNorm; the training-time Scaler off). Results are
named ``<setting>[@<r>][:<scheme>]`` (e.g. ``w2a2@0.25``, ``w4a4:per_tensor-pow2``), next to the
full model's ``<setting>``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..federation.profiles import Level
from ..models.state import float_state
from ..models.width import extract
from .evaluation import Evaluator, SettingHook


def level_of(key: Level | float) -> Level:
    """A ``levels`` key as a :class:`Level` (a width alone: that width at the run's scheme)."""
    return key if isinstance(key, Level) else Level(float(key))


def _counted(hook: SettingHook | None, level: Level, before: int, total: int) -> SettingHook | None:
    """``hook`` for one evaluator of several: its settings numbered after ``before`` others, of
    ``total``, named on ``level``."""
    if hook is None:
        return None
    return lambda name, i, _: hook(level.name(name), before + i, total)


@dataclass
class LevelledEvaluator:
    """An :class:`Evaluator` of the full model plus one per level (``levels[level]``, whose model
    is the sub-model of its width under its scheme; a float key is a width); everything else is
    the full model's evaluator's."""

    full: Evaluator
    levels: dict[Level | float, Evaluator]

    def __getattr__(self, name: str):
        if name == "full":  # not set yet (e.g. while unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.full, name)

    def __call__(self, state: dict[str, torch.Tensor],
                 on_setting: SettingHook | None = None) -> dict[str, dict[str, dict[str, float]]]:
        """As :meth:`Evaluator.__call__`; ``on_setting`` counts the levels' settings after the
        full model's (``w2a2@0.25``: setting ``i`` of them all)."""
        total = self.full.jobs + sum(e.jobs for e in self.levels.values())
        out = self.full(state, _counted(on_setting, Level(), 0, total))
        done = self.full.jobs
        for key, evaluator in self.levels.items():
            level = level_of(key)
            own = state if level.width == 1 else extract(state, float_state(evaluator.model))
            sub = evaluator(own, _counted(on_setting, level, done, total))
            done += evaluator.jobs
            for split, results in sub.items():
                out[split].update({level.name(name): v for name, v in results.items()})
        return out

    def with_data(self, **fields) -> LevelledEvaluator:
        """The same evaluators with other data fields (e.g. ``calibration``), levels included."""
        return LevelledEvaluator(self.full.with_data(**fields), {w: e.with_data(**fields) for w, e in self.levels.items()})

    def model_bytes(self) -> dict[str, int]:
        out = self.full.model_bytes()
        for key, evaluator in self.levels.items():
            out.update({level_of(key).name(name): n for name, n in evaluator.model_bytes().items()})
        return out
