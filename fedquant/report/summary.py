"""The numbers of a report: each run's figure, mean +- std per method and setting, paired
differences against a baseline, and mean accuracy per evaluated round."""

from __future__ import annotations

import statistics

from .runs import Methods, ReportError
from .stats import Paired, RunFigure, Summary, last_k_figure, mean_std, paired_difference

Table = dict[str, dict[str, Summary]]  # method -> setting -> mean, std, seeds
Pairs = dict[str, dict[str, Paired]]  # method -> setting -> difference against the baseline


def run_figure(run: dict, last: int, split: str = "test") -> RunFigure | None:
    """The run's ``split`` figure (:func:`~fedquant.report.stats.last_k_figure` over its
    rounds). Test: a run without evaluated rounds >= 1 falls back to ``final`` (one
    evaluation). Validation: None for runs without a validation split."""
    if split == "validation":
        return last_k_figure(run.get("rounds", []), "validation", last)
    figure = last_k_figure(run.get("rounds", []), "eval", last)
    return figure or RunFigure(dict(run["final"]), dict.fromkeys(run["final"], 1))


def _table(figures: dict[str, list[RunFigure]]) -> Table:
    """method -> setting -> mean +- sample std over the method's runs of their figures."""
    table = {}
    for method, runs in figures.items():
        settings = dict.fromkeys(s for f in runs for s in f.values)
        table[method] = {s: mean_std([f.values[s] for f in runs if s in f.values])
                         for s in settings}
    return table


def summarize(methods: Methods, last: int = 3, split: str = "test") -> Table:
    """method -> setting -> mean, sample std and number of seeds of the runs' ``split`` ("test"
    or "validation") figures; methods without that split are left out."""
    figures = {m: [f for f in (run_figure(r, last, split) for r in runs) if f is not None]
               for m, runs in methods.items()}
    return _table({m: f for m, f in figures.items() if f})


def evaluations_used(methods: Methods, last: int) -> dict[str, list[dict[str, int]]]:
    """method -> per run, setting -> number of test evaluations its figure averages."""
    return {m: [run_figure(r, last).used for r in runs] for m, runs in methods.items()}


def _by_seed(method: str, runs: list[dict], last: int) -> dict[int, RunFigure]:
    """seed -> test figure of a method's runs (a seed twice cannot be paired)."""
    out: dict[int, RunFigure] = {}
    for run in runs:
        seed = (run.get("config") or {}).get("seed")
        if seed is None:
            raise ReportError(f"a run of '{method}' has no config.seed: cannot pair runs by seed")
        if seed in out:
            raise ReportError(f"'{method}' has two runs with seed {seed}: "
                              "pairing needs one run per seed")
        out[seed] = run_figure(run, last)
    return out


def _setting(figures: dict[int, RunFigure], setting: str) -> dict[int, float]:
    return {seed: f.values[setting] for seed, f in figures.items() if setting in f.values}


def paired(methods: Methods, baseline: str, last: int) -> Pairs:
    """method -> setting -> paired test difference (method - ``baseline``) over shared seeds
    (:func:`~fedquant.report.stats.paired_difference`); the baseline itself is left out."""
    if baseline not in methods:
        labels = ", ".join(f"'{m}'" for m in methods)
        raise ReportError(f"--baseline '{baseline}' is not a method label; "
                          f"the labels are: {labels}")
    base = _by_seed(baseline, methods[baseline], last)
    out = {}
    for method, runs in methods.items():
        if method != baseline:
            mine = _by_seed(method, runs, last)
            settings = dict.fromkeys(s for f in mine.values() for s in f.values)
            out[method] = {s: paired_difference(_setting(mine, s), _setting(base, s))
                           for s in settings}
    return out


def curves(methods: Methods) -> dict[str, dict[int, dict[str, float]]]:
    """method -> evaluated round -> setting -> mean test accuracy over the seeds evaluated then."""
    out = {}
    for method, runs in methods.items():
        per_round: dict[int, dict[str, list[float]]] = {}
        for run in runs:
            for entry in run.get("rounds", []):
                for setting, metrics in entry.get("eval", {}).items():
                    cell = per_round.setdefault(entry["round"], {}).setdefault(setting, [])
                    cell.append(metrics["accuracy"])
        out[method] = {r: {s: statistics.fmean(v) for s, v in cells.items()}
                       for r, cells in sorted(per_round.items())}
    return out


def uplink_curves(methods: Methods) -> dict[str, dict[int, float]]:
    """method -> evaluated round -> the clients' cumulative uplink MB by then, mean over seeds
    (round 0: nothing sent); empty for runs written before bytes were counted."""
    out = {}
    for method, runs in methods.items():
        per_round: dict[int, list[float]] = {}
        for run in runs:
            if not (run.get("communication") or {}).get("uplink_bytes"):
                continue
            sent = 0
            for entry in run.get("rounds", []):
                sent = entry.get("train", {}).get("cumulative_uplink_bytes", sent)
                if "eval" in entry:
                    per_round.setdefault(entry["round"], []).append(sent / 1e6)
        if per_round:
            out[method] = {r: statistics.fmean(v) for r, v in sorted(per_round.items())}
    return out


def shown_settings(settings: list[str]) -> list[str]:
    """The settings of the per-round table and plot: fp, w4a4 and the last full-model one (not a
    level's ``<setting>@<r>`` or ``<setting>:<scheme>``: fedquant.federation.profiles.Level), when present."""
    full = [s for s in settings if "@" not in s and ":" not in s] or settings
    return list(dict.fromkeys(s for s in ("fp", "w4a4", full[-1]) if s in settings))
