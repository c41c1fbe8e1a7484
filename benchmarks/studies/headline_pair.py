"""The headline pair of the low-bit study (issue 18): each side's options (training variants and
post-training re-evaluations of the same seeds), one chosen per setting on validation, then the
paired test difference.

``python -m benchmarks.studies.headline_pair --a multirun/lowbit/qafedavg_cosine multirun/lowbit_re/qafedavg_cosine_pct --b multirun/lowbit/fedavg multirun/lowbit/fedavg_cosine multirun/lowbit_re/fedavg_adaround multirun/lowbit_re/fedavg_cosine_adaround``

An option is a folder of ``<seed>/results.json`` (``benchmarks.studies.study lowbit`` runs, or
``fedquant.reevaluate --out`` folders); a run's figure is the mean of its last 3 evaluations. Per
setting s and side, the option with the highest mean validation figure over its seeds among
those that evaluated s is chosen,

    chosen(side, s) = argmax_{o in side, o evaluated s} mean_seeds val_{o, s},

and the sides' test figures are paired by seed (95% t-interval,
:func:`fedquant.report.stats.paired_difference`). Test figures are never used for a choice.
Prints markdown.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from benchmarks.studies.lowbit_select import SETTINGS, Figures, run_figures
from fedquant.report.stats import mean_std, paired_difference


def choose(options: dict[str, Figures], setting: str) -> str | None:
    """The option with the highest mean validation figure at ``setting`` (None if none has it)."""
    scores = {name: float(np.mean([f[setting][1] for f in runs.values()]))
              for name, runs in options.items() if runs and all(setting in f for f in runs.values())}
    return max(scores, key=scores.get) if scores else None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--a", nargs="+", type=Path, required=True, help="side A's option folders")
    parser.add_argument("--b", nargs="+", type=Path, required=True, help="side B's option folders")
    parser.add_argument("--last", type=int, default=3)
    args = parser.parse_args(argv)
    sides = {side: {str(p): run_figures(p, args.last) for p in folders} for side, folders in (("A", args.a), ("B", args.b))}
    if empty := [name for options in sides.values() for name, runs in options.items() if not runs]:
        parser.error(f"no <seed>/results.json under {', '.join(empty)}")
    print("| setting | A: chosen option | A test % | B: chosen option | B test % | A − B, paired (95% interval) |")
    print("|---|---|---|---|---|---|")
    for setting in SETTINGS:
        a, b = choose(sides["A"], setting), choose(sides["B"], setting)
        if a is None or b is None:
            continue
        ta = {seed: f[setting][0] for seed, f in sides["A"][a].items()}
        tb = {seed: f[setting][0] for seed, f in sides["B"][b].items()}
        ma, mb, p = mean_std(list(ta.values())), mean_std(list(tb.values())), paired_difference(ta, tb)
        verdict = f" {p.verdict}" if p.verdict in ("A > B", "A < B") else ", not resolved"
        print(f"| {setting} | {a} | {ma.mean:.2f} ± {ma.std:.2f} | {b} | {mb.mean:.2f} ± {mb.std:.2f} | "
              f"{p.mean:+.2f} [{p.low:+.2f}, {p.high:+.2f}]{verdict} (n={p.n}) |")


if __name__ == "__main__":
    main()
