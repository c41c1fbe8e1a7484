"""Statistics over runs: a run's figure, mean +- std over seeds, paired differences with a
t-interval.

Plain numpy and ``scipy.stats``; no knowledge of sweeps or files (``runs.py`` and ``summary.py``
do that).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class RunFigure:
    """One run's figure per setting, and how many evaluations each figure averages."""

    values: dict[str, float]
    used: dict[str, int]


@dataclass(frozen=True)
class Summary:
    """Mean and sample standard deviation of ``n`` values."""

    mean: float
    std: float
    n: int


@dataclass(frozen=True)
class Paired:
    """Mean paired difference A - B over ``n`` shared seeds, its confidence interval and verdict."""

    mean: float
    low: float
    high: float
    n: int
    verdict: str


def last_k_figure(rounds: Sequence[Mapping], split: str, k: int) -> RunFigure | None:
    """Per setting, the mean of the last ``k`` evaluations of ``split`` ("eval" = test,
    "validation") over rounds >= 1 (round 0 is the untrained model and never counts):

        figure_s = (1/m) * sum_{j=1..m} acc_s(r_j),   m = min(k, number of evaluations of s)

    where r_1 < ... < r_m are the last m rounds that evaluated setting s. None when no round >= 1
    has ``split``."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    per_setting: dict[str, list[tuple[int, float]]] = {}
    for entry in rounds:
        if entry.get("round", 0) < 1:
            continue
        for setting, metrics in (entry.get(split) or {}).items():
            per_setting.setdefault(setting, []).append((entry["round"], metrics["accuracy"]))
    if not per_setting:
        return None
    values, used = {}, {}
    for setting, evaluations in per_setting.items():
        last = [acc for _, acc in sorted(evaluations)[-k:]]
        values[setting], used[setting] = float(np.mean(last)), len(last)
    return RunFigure(values, used)


def mean_std(values: Sequence[float]) -> Summary:
    """Mean x_bar = sum(x)/n and sample standard deviation s = sqrt(sum((x - x_bar)^2) / (n - 1));
    s = 0 for a single value."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise ValueError("mean_std of no values")
    std = float(np.std(x, ddof=1)) if x.size > 1 else 0.0
    return Summary(float(np.mean(x)), std, int(x.size))


def paired_difference(a: Mapping[int, float], b: Mapping[int, float],
                      level: float = 0.95) -> Paired:
    """Paired differences d_i = a_i - b_i over the seeds i present in both ``a`` and ``b``
    (seed -> figure); their mean d_bar and the two-sided t-interval

        d_bar +- t_{(1 + level)/2, n-1} * s_d / sqrt(n),   s_d = sample std of the d_i.

    Verdict "A > B" when the interval lies above 0, "A < B" when below, else "not resolved";
    "not resolved (n=1)" with one shared seed (no interval: low = high = NaN), and
    "no shared seeds" with none."""
    seeds = sorted(set(a) & set(b))
    d = np.array([a[s] - b[s] for s in seeds], dtype=float)
    n = len(seeds)
    if n == 0:
        return Paired(math.nan, math.nan, math.nan, 0, "no shared seeds")
    if n == 1:
        return Paired(float(d[0]), math.nan, math.nan, 1, "not resolved (n=1)")
    mean = float(d.mean())
    half = float(stats.t.ppf((1 + level) / 2, n - 1)) * float(d.std(ddof=1)) / math.sqrt(n)
    low, high = mean - half, mean + half
    verdict = "A > B" if low > 0 else "A < B" if high < 0 else "not resolved"
    return Paired(mean, low, high, n, verdict)
