"""``python -m fedquant.report <sweep dir>...``: comparison tables and plots for Hydra sweeps.

Jobs are grouped into methods by their Hydra overrides (those that differ between jobs; seed,
and ``resume``/``resume_from`` excluded: a continued run is the same method); each cell is the
mean +- sample standard deviation over a method's seeds of the final test accuracy at one
evaluation setting. Also reported: the accuracy per evaluated round (mean
over seeds; the convergence curves), per device profile when the runs have profiles, and the
jobs' wall time. Writes report.md, report.csv, report.png (accuracy vs bit-width) and
report_rounds.png (accuracy vs round) in the sweep directory (or ``--out``) and prints report.md.
Several sweeps, or single job folders, can be reported together (``--out`` is then required).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import statistics
import sys
from pathlib import Path

import yaml

from ..tracking.files import write_text_atomic
from ..tracking.plots import plot_methods_vs_bits, plot_methods_vs_round


class ReportError(ValueError):
    """Nothing to report from the folders given; ``str()`` is the one line shown to the user."""


def _overrides(job_dir: Path) -> list[str]:
    path = job_dir / ".hydra" / "overrides.yaml"
    return [str(o) for o in yaml.safe_load(path.read_text()) or []] if path.is_file() else []


def collect(roots: list[Path]) -> tuple[dict[str, list[dict]], list[Path]]:
    """Final results under the sweep (or job) folders ``roots``, grouped by method label; and the
    job folders that have no results.json."""
    job_dirs = sorted({p.parent.parent for root in roots for p in root.rglob(".hydra/overrides.yaml")} |
                      {p.parent for root in roots for p in root.rglob("results.json")},
                      key=lambda d: (int(d.name) if d.name.isdigit() else float("inf"), str(d)))  # job order
    overrides = {d: [o for o in _overrides(d) if not o.split("=")[0].lstrip("+").startswith(("seed", "hydra.", "resume"))]
                 for d in job_dirs}
    shared = set.intersection(*(set(o) for o in overrides.values())) if overrides else set()
    methods: dict[str, list[dict]] = {}
    missing = []
    for d in job_dirs:
        path = d / "results.json"
        if not path.is_file():
            missing.append(d)
            continue
        results = json.loads(path.read_text())
        label = ", ".join(o for o in overrides[d] if o not in shared) or results["config"]["strategy"]["name"]
        methods.setdefault(label, []).append(results)
    return methods, missing


def _mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(methods: dict[str, list[dict]]) -> dict[str, dict[str, tuple[float, float, int]]]:
    """method -> setting -> (mean, std, number of seeds)."""
    table = {}
    for method, runs in methods.items():
        cells = {}
        for setting in runs[0]["final"]:
            values = [r["final"][setting] for r in runs if setting in r["final"]]
            cells[setting] = (*_mean_std(values), len(values))
        table[method] = cells
    return table


def curves(methods: dict[str, list[dict]]) -> dict[str, dict[int, dict[str, float]]]:
    """method -> evaluated round -> setting -> mean accuracy over the seeds evaluated then."""
    out = {}
    for method, runs in methods.items():
        per_round: dict[int, dict[str, list[float]]] = {}
        for run in runs:
            for entry in run["rounds"]:
                for setting, metrics in entry.get("eval", {}).items():
                    per_round.setdefault(entry["round"], {}).setdefault(setting, []).append(metrics["accuracy"])
        out[method] = {r: {s: statistics.fmean(v) for s, v in cells.items()} for r, cells in sorted(per_round.items())}
    return out


def profiles_markdown(methods: dict[str, list[dict]]) -> str:
    """Mean +- std accuracy of each device profile at each setting it deploys ('' without profiles)."""
    lines = []
    for method, runs in methods.items():
        cells: dict[tuple[str, str], list[float]] = {}
        for run in runs:
            for profile, accs in (run.get("per_profile") or {}).items():
                for setting, acc in accs.items():
                    cells.setdefault((profile, setting), []).append(acc)
        for (profile, setting), values in cells.items():
            mean, std = _mean_std(values)
            lines.append(f"| {method} | {profile} | {setting} | {100 * mean:.2f} ± {100 * std:.2f} |")
    if not lines:
        return ""
    return "\n## Per device profile\n\n| method | profile | setting | accuracy |\n|---|---|---|---|\n" + "\n".join(lines) + "\n"


def rounds_markdown(curve: dict[str, dict[int, dict[str, float]]], shown: list[str]) -> str:
    """Accuracy per evaluated round (mean over seeds), cells ``a / b / ...`` for ``shown`` settings."""
    rounds = sorted({r for per_round in curve.values() for r in per_round})
    lines = [f"\n## Accuracy per round (mean over seeds; {' / '.join(shown)})\n",
             "| method | " + " | ".join(str(r) for r in rounds) + " |", "|---|" + "---|" * len(rounds)]
    for method, per_round in curve.items():
        cells = [" / ".join(f"{100 * per_round[r][s]:.1f}" for s in shown if s in per_round.get(r, {})) for r in rounds]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def wall_time_line(methods: dict[str, list[dict]]) -> str:
    times = [run["wall_time_s"] for runs in methods.values() for run in runs]
    return (f"\n{len(times)} jobs; their wall times sum to {sum(times) / 60:.1f} min "
            f"({min(times):.0f}-{max(times):.0f} s per job).\n")


def to_markdown(table: dict, settings: list[str]) -> str:
    lines = ["| method | seeds | " + " | ".join(settings) + " |", "|---|---|" + "---|" * len(settings)]
    for method, cells in table.items():
        n = max(c[2] for c in cells.values())
        row = [f"{100 * cells[s][0]:.2f} ± {100 * cells[s][1]:.2f}" if s in cells else "" for s in settings]
        lines.append(f"| {method} | {n} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def to_csv(table: dict) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["method", "setting", "mean_accuracy", "std_accuracy", "seeds"])
    for method, cells in table.items():
        for setting, (mean, std, n) in cells.items():
            writer.writerow([method, setting, mean, std, n])
    return buf.getvalue()


def make_report(roots: list[Path], out: Path | None = None) -> str:
    methods, missing = collect(roots)
    if not methods:
        where = " ".join(str(r) for r in roots)
        raise ReportError(f"no results.json under {where}: pass the directory of a finished sweep (multirun/<date>/<time>)")
    if out is None and len(roots) > 1:
        raise ReportError("several sweeps given: say where the combined report goes with --out DIR")
    out = out or roots[0]
    name = roots[0].name if len(roots) == 1 else out.name
    out.mkdir(parents=True, exist_ok=True)
    table = summarize(methods)
    settings = list(dict.fromkeys(s for cells in table.values() for s in cells))
    curve = curves(methods)
    shown = list(dict.fromkeys(s for s in ("fp", "w4a4", settings[-1]) if s in settings))
    markdown = to_markdown(table, settings) + profiles_markdown(methods) + rounds_markdown(curve, shown)
    markdown += wall_time_line(methods)
    if missing:
        markdown += "\nJobs without results (failed or unfinished): " + ", ".join(str(m) for m in missing) + "\n"
    write_text_atomic(out / "report.md", markdown)
    write_text_atomic(out / "report.csv", to_csv(table))
    plot_methods_vs_bits({m: {s: c[:2] for s, c in cells.items()} for m, cells in table.items()},
                         out / "report.png", f"Final accuracy vs bit-width ({name})")
    plot_methods_vs_round(curve, shown, out / "report_rounds.png", f"Accuracy vs round, mean over seeds ({name})")
    return markdown


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fedquant.report", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dirs", type=Path, nargs="+", metavar="sweep_dir",
                        help="Hydra multirun directories, or single job folders")
    parser.add_argument("--out", type=Path, default=None,
                        help="where to write report.* (default: the sweep directory, when there is one)")
    args = parser.parse_args(argv)
    try:
        for d in args.sweep_dirs:
            if not d.is_dir():
                raise ReportError(f"{d} is not a directory: pass a multirun/<date>/<time> folder")
        sys.stdout.write(make_report(args.sweep_dirs, args.out))
    except ReportError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
