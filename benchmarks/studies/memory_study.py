"""The equal-memory comparison (issue 21): per device profile, each arm's figure and paired
differences between arms.

``python -m benchmarks.studies.memory_study multirun/lowbit --arms memory_heterofl_w025 memory_qafedavg_w2a2 memory_mix_w05_w8a8``

Each arm's runs live in ``ROOT/<arm>/<seed>/results.json`` (``benchmarks.studies.study lowbit``). A
profile's figure is the mean of the run's last 3 evaluations (rounds >= 1) of the setting the
profile deploys, on its own sub-model (``<setting>@<width>``), on the test set and on the
validation split; arms are paired by seed against the first arm (95% t-interval,
:func:`fedquant.report.stats.paired_difference`). Prints markdown.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fedquant.federation.bitwidths import parse_setting, setting_name
from fedquant.federation.profiles import at_width, profiles_from_config
from fedquant.report.stats import last_k_figure, mean_std, paired_difference


def profile_figures(results: dict, last: int = 3) -> dict[str, dict[str, tuple[str, float, float]]]:
    """profile -> setting -> (result key, test figure, validation figure) of one run."""
    test = last_k_figure(results["rounds"], "eval", last).values
    validation = last_k_figure(results["rounds"], "validation", last).values
    out: dict[str, dict[str, tuple[str, float, float]]] = {}
    for p in profiles_from_config(results["config"]["strategy"]["profiles"]):
        for bits in p.bits:
            key = at_width(setting_name(parse_setting(bits)), p.width)
            out.setdefault(p.name, {})[setting_name(parse_setting(bits))] = (key, test[key], validation[key])
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--arms", nargs="+", required=True)
    parser.add_argument("--last", type=int, default=3)
    args = parser.parse_args(argv)
    figures: dict[str, dict[int, dict]] = {}  # arm -> seed -> profile figures
    for arm in args.arms:
        for path in sorted((args.root / arm).glob("*/results.json")):
            results = json.loads(path.read_text())
            figures.setdefault(arm, {})[int(results["config"]["seed"])] = profile_figures(results, args.last)
    base = args.arms[0]
    print("| arm | profile | deployed as | seeds | test % | validation % | test vs " + base + " (points, 95% CI) |")
    print("|---|---|---|---|---|---|---|")
    for arm, runs in figures.items():
        first = next(iter(runs.values()))
        for profile, settings in first.items():
            for setting, (key, _, _) in settings.items():
                test = {s: 100 * f[profile][setting][1] for s, f in runs.items()}
                val = {s: 100 * f[profile][setting][2] for s, f in runs.items()}
                t, v = mean_std(list(test.values())), mean_std(list(val.values()))
                pair = ""
                if arm != base and base in figures:
                    base_profile = next(iter(figures[base].values()))[profile]
                    base_test = {s: 100 * f[profile][next(iter(base_profile))][1] for s, f in figures[base].items()}
                    p = paired_difference(test, base_test)
                    pair = f"{p.mean:+.2f} [{p.low:+.2f}, {p.high:+.2f}]: {p.verdict}" + ("" if "n=" in p.verdict else f", n={p.n}")
                print(f"| {arm} | {profile} | {key} | {t.n} | {t.mean:.2f} ± {t.std:.2f} | {v.mean:.2f} ± {v.std:.2f} | {pair} |")


if __name__ == "__main__":
    main()
