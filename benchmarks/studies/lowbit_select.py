"""The low-bit study's arms side by side (issue 18): validation and test figures per setting,
paired test differences against a base arm, and the best variant chosen on validation.

``python -m benchmarks.studies.lowbit_select multirun/lowbit --base qafedavg --candidates qafedavg qafedavg_per_round ... --arms fedavg fedavg_kure``

Runs are ``ROOT/<arm>/<seed>/results.json`` (``benchmarks.studies.study lowbit``). A run's figure per
setting is the mean of its last 3 evaluations (rounds >= 1). The selection rule, fixed before the
runs were read: a candidate's score is its validation figure averaged over the settings
fp, w8a8, w6a6, w4a4, w3a3, w2a2 and over the seeds that every candidate has,

    score(arm) = (1 / |S| |T|) * sum_{s in S} sum_{t in T} val_{arm, s}(t)

with S the shared seeds and T the six settings; the highest score is chosen. Test figures are
printed, never used. Prints markdown: the score table, then test (mean +- std over all the arm's
seeds) with the paired difference against ``--base`` (95% t-interval over the shared seeds).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fedquant.report.stats import last_k_figure, mean_std, paired_difference

SETTINGS = ("fp", "w8a8", "w6a6", "w4a4", "w3a3", "w2a2")

Figures = dict[int, dict[str, tuple[float, float]]]  # seed -> setting -> (test, validation), in %


def run_figures(folder: Path, last: int = 3) -> Figures:
    """seed -> setting -> (test %, validation %) of every ``folder/<seed>/results.json`` (study
    runs or ``fedquant.reevaluate --out`` folders), for the settings each run evaluated."""
    out: Figures = {}
    for path in sorted(folder.glob("*/results.json")):
        results = json.loads(path.read_text())
        test = last_k_figure(results["rounds"], "eval", last).values
        validation = last_k_figure(results["rounds"], "validation", last).values
        out[int(path.parent.name)] = {s: (100 * test[s], 100 * validation[s]) for s in test}
    return out


def arm_figures(root: Path, arm: str, last: int = 3) -> Figures:
    """seed -> setting -> (test %, validation %) for every finished run of ``arm``."""
    return run_figures(root / arm, last)


def select(figures: dict[str, Figures]) -> tuple[str, dict[str, float], list[int]]:
    """The candidate with the highest validation score (module docstring), every score, and the
    shared seeds the scores average over."""
    seeds = sorted(set.intersection(*(set(runs) for runs in figures.values())))
    if not seeds:
        raise ValueError("the candidates share no seed; run them with a common seed first")
    scores = {arm: sum(runs[seed][s][1] for seed in seeds for s in SETTINGS) / (len(seeds) * len(SETTINGS))
              for arm, runs in figures.items()}
    return max(scores, key=scores.get), scores, seeds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--candidates", nargs="+", required=True, help="the variants the best is chosen from")
    parser.add_argument("--arms", nargs="*", default=[], help="further arms to tabulate (not candidates)")
    parser.add_argument("--base", required=True, help="the arm every other is paired against")
    parser.add_argument("--last", type=int, default=3)
    args = parser.parse_args(argv)
    figures = {arm: arm_figures(args.root, arm, args.last) for arm in dict.fromkeys([*args.candidates, *args.arms, args.base])}
    if missing := [arm for arm, runs in figures.items() if not runs]:
        parser.error(f"no finished runs (results.json) under {args.root} for {', '.join(missing)}")
    chosen, scores, seeds = select({arm: figures[arm] for arm in args.candidates})
    print(f"Validation score (mean over {', '.join(SETTINGS)} and seeds {seeds}); chosen: **{chosen}**\n")
    print("| candidate | score | " + " | ".join(SETTINGS) + " |")
    print("|---" * (len(SETTINGS) + 2) + "|")
    for arm in sorted(scores, key=scores.get, reverse=True):
        cells = [f"{mean_std([figures[arm][seed][s][1] for seed in seeds]).mean:.2f}" for s in SETTINGS]
        print(f"| {arm} | {scores[arm]:.2f} | " + " | ".join(cells) + " |")
    print(f"\nTest %, mean ± std over each arm's seeds; paired difference against {args.base} (95% interval)\n")
    print("| arm | seeds | " + " | ".join(SETTINGS) + " |")
    print("|---" * (len(SETTINGS) + 2) + "|")
    base_runs = figures[args.base]
    for arm, runs in figures.items():
        cells = [f"{(m := mean_std([runs[seed][s][0] for seed in runs])).mean:.2f} ± {m.std:.2f}" for s in SETTINGS]
        print(f"| {arm} | {len(runs)} | " + " | ".join(cells) + " |")
        if arm != args.base:
            pairs = [paired_difference({seed: r[s][0] for seed, r in runs.items()},
                                       {seed: r[s][0] for seed, r in base_runs.items()}) for s in SETTINGS]
            cells = [f"{p.mean:+.2f} [{p.low:+.2f}, {p.high:+.2f}]" + (f" {p.verdict}" if p.verdict in ("A > B", "A < B") else "")
                     for p in pairs]
            print(f"| − {args.base}, paired | {pairs[0].n} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
