"""Mixed precision under a byte budget: which setting each layer runs at.

Given per-layer sensitivities ``D[l][j]`` (the cost to accuracy of running layer ``l`` at
option ``j``, measured by :meth:`fedquant.learning.evaluation.Evaluator.sensitivities`) and the
exact bits ``c[l][j]`` that layer then takes (:func:`fedquant.quant.size.layer_bits`), the
assignment is the multiple-choice knapsack::

    minimise    sum_l D[l][j_l]
    subject to  F + sum_l c[l][j_l] <= 8 * budget_bytes        F = bits of everything else

so that ``model_bytes = ceil((F + sum_l c[l][j_l]) / 8) <= budget_bytes`` holds exactly. It is
solved as a 0/1 integer program with one binary ``x[l, j]`` per layer and option
(``sum_j x[l, j] = 1``), by ``scipy.optimize.milp`` (HiGHS, relative gap 0). HiGHS still stops
within an absolute gap of 1e-6, so the objective is first put on a fixed scale: each layer's row
minus its minimum (the same for every assignment), divided by the largest spread and times 1e6;
assignments whose sensitivities differ by less than ~1e-12 of that spread are ties, broken
towards fewer bits (a term of at most 1e-3 per layer on the scaled objective). A non-finite
sensitivity (a diverged model) counts as the largest finite one plus the spread.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp


class BudgetError(ValueError):
    """The budget is below the smallest size any assignment reaches."""


@dataclass(frozen=True)
class Choice:
    """The knapsack's answer: option index per layer, its total sensitivity and its bits."""

    options: tuple[int, ...]
    sensitivity: float
    bits: int


def smallest_bits(costs: Sequence[Sequence[int]], fixed_bits: int = 0) -> int:
    """The fewest bits any assignment takes: ``F + sum_l min_j c[l][j]``."""
    return fixed_bits + sum(min(c) for c in costs)


def solve(sensitivity: Sequence[Sequence[float]], costs: Sequence[Sequence[int]], budget_bits: int,
          fixed_bits: int = 0) -> Choice:
    """The option per layer minimising total sensitivity with ``F + sum c <= budget_bits``
    (module docstring); :class:`BudgetError` when even the smallest assignment exceeds it.
    ``sensitivity[l][j]`` / ``costs[l][j]``: layer ``l`` at option ``j``."""
    if len(sensitivity) != len(costs) or any(len(d) != len(c) for d, c in zip(sensitivity, costs, strict=True)):
        raise ValueError("sensitivity and costs need one row per layer and one entry per option")
    least = smallest_bits(costs, fixed_bits)
    if least > budget_bits:
        raise BudgetError(f"the smallest assignment takes {least} bits, over the budget of {budget_bits}")
    sizes = [len(c) for c in costs]
    d = np.concatenate([_relative(row) for row in _finite(sensitivity)])
    c = np.concatenate([np.asarray(x, dtype=float) for x in costs])
    objective = 1e6 * d / max(float(d.max()), 1e-300) + 1e-3 * c / max(float(c.max()), 1.0)
    one_each = np.zeros((len(sizes), len(c)))
    for layer, start in enumerate(np.cumsum([0] + sizes[:-1])):
        one_each[layer, start:start + sizes[layer]] = 1
    constraints = [LinearConstraint(one_each, 1, 1), LinearConstraint(c[None, :], -np.inf, budget_bits - fixed_bits)]
    result = milp(objective, constraints=constraints, integrality=np.ones(len(c)), bounds=Bounds(0, 1),
                  options={"mip_rel_gap": 0.0})  # proven optimal, not within HiGHS' default 0.01%
    if not result.success:  # cannot happen for a feasible instance; say so rather than guess
        raise RuntimeError(f"the knapsack solver failed: {result.message}")
    x = np.round(result.x).astype(int)
    options, start = [], 0
    for n in sizes:
        options.append(int(np.argmax(x[start:start + n])))
        start += n
    choice = _choice(options, sensitivity, costs, fixed_bits)
    if choice.bits > budget_bits:  # counted exactly in integers: never trust the solver's tolerance
        raise RuntimeError(f"the knapsack solver returned {choice.bits} bits for a budget of {budget_bits}")
    return choice


def _finite(sensitivity: Sequence[Sequence[float]]) -> list[np.ndarray]:
    """Rows with every non-finite entry replaced by the largest finite one plus the spread."""
    rows = [np.asarray(row, dtype=float) for row in sensitivity]
    finite = np.concatenate(rows)[np.isfinite(np.concatenate(rows))]
    worst = float(finite.max() + np.ptp(finite) + 1.0) if finite.size else 0.0
    return [np.where(np.isfinite(row), row, worst) for row in rows]


def _relative(row: np.ndarray) -> np.ndarray:
    """A layer's row minus its minimum: the argmin over assignments is unchanged (one option per layer)."""
    return row - row.min()


def brute_force(sensitivity: Sequence[Sequence[float]], costs: Sequence[Sequence[int]], budget_bits: int,
                fixed_bits: int = 0) -> Choice | None:
    """Every assignment tried (small instances only: the reference :func:`solve` is tested
    against); None when none fits."""
    best = None
    for options in itertools.product(*(range(len(c)) for c in costs)):
        choice = _choice(options, sensitivity, costs, fixed_bits)
        if choice.bits <= budget_bits and (best is None or choice.sensitivity < best.sensitivity - 1e-12):
            best = choice
    return best


def _choice(options: Sequence[int], sensitivity, costs, fixed_bits: int) -> Choice:
    return Choice(tuple(options), float(sum(d[j] for d, j in zip(sensitivity, options, strict=True))),
                  fixed_bits + sum(int(c[j]) for c, j in zip(costs, options, strict=True)))
