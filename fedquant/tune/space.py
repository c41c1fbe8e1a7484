"""The search space on the command line: ``KEY=SPEC``, one ``--param`` each.

=====================  ==========================================  ============================
spec                   meaning                                      Optuna distribution
=====================  ==========================================  ============================
``key=log:A:B``        a float in [A, B] on a log scale (A > 0)     ``FloatDistribution(log=True)``
``key=A:B``            a float in [A, B]                            ``FloatDistribution``
``key=int:A:B``        an integer in [A, B]                         ``IntDistribution``
``key=choice:X,Y,Z``   one of the values, passed to Hydra as typed  ``CategoricalDistribution``
=====================  ==========================================  ============================

A bad spec is a :class:`SpaceError` whose ``str()`` is one line naming the spec and the syntax.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import Trial

SYNTAX = "KEY=log:A:B (float, log scale), KEY=A:B (float), KEY=int:A:B (integer) or KEY=choice:X,Y,Z"

Space = dict[str, BaseDistribution]


class SpaceError(ValueError):
    """A bad ``--param``; ``str()`` is the one line shown to the user."""


def _bad(spec: str, why: str) -> SpaceError:
    return SpaceError(f"--param {spec}: {why}; the syntax is {SYNTAX}")


def _number(spec: str, text: str, kind: type) -> float | int:
    try:
        value = kind(text)
    except ValueError:
        raise _bad(spec, f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
    if not math.isfinite(value):
        raise _bad(spec, f"{text!r} is not a finite number")
    return value


def _bounds(spec: str, parts: list[str], kind: type) -> tuple:
    if len(parts) != 2:
        raise _bad(spec, "a range is two bounds A:B")
    low, high = (_number(spec, p, kind) for p in parts)
    if not low < high:
        raise _bad(spec, f"the lower bound {parts[0]} is not below the upper bound {parts[1]}")
    return low, high


def parse_param(spec: str) -> tuple[str, BaseDistribution]:
    """``"client.lr=log:0.005:0.3"`` -> ``("client.lr", FloatDistribution(0.005, 0.3, log=True))``."""
    key, sep, rest = spec.partition("=")
    key = key.strip()
    if not sep or not key or not rest:
        raise _bad(spec, "expected KEY=SPEC")
    kind, _, tail = rest.partition(":")
    if kind == "choice":
        choices = tail.split(",")
        if not tail or any(not c for c in choices):
            raise _bad(spec, "choice needs values separated by commas, none empty")
        if len(set(choices)) != len(choices):
            raise _bad(spec, "a choice is listed twice")
        return key, CategoricalDistribution(choices)
    if kind == "int":
        low, high = _bounds(spec, tail.split(":"), int)
        return key, IntDistribution(low, high)
    if kind == "log":
        low, high = _bounds(spec, tail.split(":"), float)
        if low <= 0:
            raise _bad(spec, "a log scale needs a lower bound above 0")
        return key, FloatDistribution(low, high, log=True)
    if kind.isalpha():
        raise _bad(spec, f"unknown kind {kind!r}")
    return key, FloatDistribution(*_bounds(spec, rest.split(":"), float))


def to_spec(key: str, dist: BaseDistribution) -> str:
    """The inverse of :func:`parse_param`: ``KEY=SPEC`` in its canonical form."""
    if isinstance(dist, CategoricalDistribution):
        return f"{key}=choice:{','.join(map(str, dist.choices))}"
    kind = "int:" if isinstance(dist, IntDistribution) else "log:" if dist.log else ""
    return f"{key}={kind}{dist.low!r}:{dist.high!r}"


def parse_space(specs: Iterable[str]) -> Space:
    """Every ``--param`` in order; a key given twice is a :class:`SpaceError`."""
    space: Space = {}
    for spec in specs:
        key, dist = parse_param(spec)
        if key in space:
            raise SpaceError(f"--param {spec}: {key} is searched twice; give each key once")
        space[key] = dist
    return space


def suggest(trial: Trial, space: Space) -> dict:
    """One point of ``space``, drawn by the study's sampler through ``trial``."""
    point = {}
    for key, dist in space.items():
        if isinstance(dist, FloatDistribution):
            point[key] = trial.suggest_float(key, dist.low, dist.high, log=dist.log)
        elif isinstance(dist, IntDistribution):
            point[key] = trial.suggest_int(key, dist.low, dist.high, log=dist.log)
        else:
            point[key] = trial.suggest_categorical(key, dist.choices)
    return point


def corners(space: Space) -> list[dict]:
    """Points that together take every bound and every choice of ``space`` (the first point at
    the lower bounds and first choices, then one value changed at a time): what :mod:`.checks`
    composes before any trial."""
    def values(dist: BaseDistribution) -> list:
        return list(dist.choices) if isinstance(dist, CategoricalDistribution) else [dist.low, dist.high]

    base = {key: values(dist)[0] for key, dist in space.items()}
    points = [base]
    for key, dist in space.items():
        points += [{**base, key: v} for v in values(dist)[1:]]
    return points


def as_overrides(point: Mapping) -> list[str]:
    """``{"client.lr": 0.05}`` -> ``["client.lr=0.05"]`` (floats in full: a command that
    reproduces a trial gives it the exact value)."""
    return [f"{key}={value!r}" if isinstance(value, float) else f"{key}={value}" for key, value in point.items()]
