"""``python -m fedquant.report SWEEP... [--out DIR] [--last K] [--baseline LABEL]``: comparison
tables and plots for Hydra sweeps.

Jobs are grouped into methods by their Hydra overrides (those that differ between jobs; seed,
and ``resume``/``resume_from`` excluded: a continued run is the same method). A run's figure at
an evaluation setting is the mean of its last K evaluations at rounds >= 1 (round 0 is the
untrained model; default K=3; a run with fewer uses those it has, and the report says which);
each cell is the mean +- sample standard deviation of those figures over the method's seeds.

report.md holds, in order: the evaluation protocol the runs recorded and the figure rule; the
TEST table; the VALIDATION table when the runs have a validation split (choices are made on it;
test is only reported); with ``--baseline LABEL`` (a method label exactly as in the tables) the
per-seed paired test differences of every method against LABEL (runs paired by seed: mean
difference in points, 95% t-interval, a verdict only where the interval excludes 0, n); accuracy
per device profile; test accuracy per evaluated round (mean over seeds); wall time; jobs without
results. Also writes report.csv (one row per method and setting: test and validation mean, std,
seeds, K, and the paired columns), report.png (test figure vs bit-width) and report_rounds.png
(test accuracy vs round, from round 0), in the sweep directory (or ``--out``); prints report.md
and, last, the folder and files written. Several sweeps, or single job folders, can be reported
together (``--out`` is then required). Bad input: one line ``error: ...`` and exit status 2.
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
from .stats import Paired, RunFigure, Summary, last_k_figure, mean_std, paired_difference

REPORT_FILES = ("report.md", "report.csv", "report.png", "report_rounds.png")
NUM_CLASSES = {"digits": 10, "fmnist": 10, "cifar10": 10, "cifar100": 100}  # chance line in plots
Methods = dict[str, list[dict]]  # method label -> its runs' results.json
Table = dict[str, dict[str, Summary]]  # method -> setting -> mean, std, seeds
Pairs = dict[str, dict[str, Paired]]  # method -> setting -> difference against the baseline


class ReportError(ValueError):
    """Nothing to report from the folders given; ``str()`` is the one line shown to the user."""


# ------------------------------------------------------------------------------------ collect

def _overrides(job_dir: Path) -> list[str]:
    path = job_dir / ".hydra" / "overrides.yaml"
    return [str(o) for o in yaml.safe_load(path.read_text()) or []] if path.is_file() else []


def _method_overrides(job_dir: Path) -> list[str]:
    """The job's overrides that define its method (not seed, hydra.*, resume*)."""
    excluded = ("seed", "hydra.", "resume")
    return [o for o in _overrides(job_dir) if not o.split("=")[0].lstrip("+").startswith(excluded)]


def _job_order(d: Path) -> tuple[float, str]:
    return (int(d.name) if d.name.isdigit() else float("inf"), str(d))


def _job_dirs(roots: list[Path]) -> list[Path]:
    """Every job folder under ``roots`` (with a .hydra folder or a results.json), in job order."""
    found = {p.parent.parent for root in roots for p in root.rglob(".hydra/overrides.yaml")}
    found |= {p.parent for root in roots for p in root.rglob("results.json")}
    return sorted(found, key=_job_order)


def collect(roots: list[Path]) -> tuple[Methods, list[Path]]:
    """Final results under the sweep (or job) folders ``roots``, grouped by method label; and the
    job folders that have no results.json."""
    job_dirs = _job_dirs(roots)
    overrides = {d: _method_overrides(d) for d in job_dirs}
    shared = set.intersection(*(set(o) for o in overrides.values())) if overrides else set()
    methods: Methods = {}
    missing = []
    for d in job_dirs:
        path = d / "results.json"
        if not path.is_file():
            missing.append(d)
            continue
        results = json.loads(path.read_text())
        label = ", ".join(o for o in overrides[d] if o not in shared)
        methods.setdefault(label or results["config"]["strategy"]["name"], []).append(results)
    return methods, missing


# --------------------------------------------------------------------------------- statistics

def run_figure(run: dict, last: int, split: str = "test") -> RunFigure | None:
    """The run's ``split`` figure (:func:`~fedquant.analysis.stats.last_k_figure` over its
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
    (:func:`~fedquant.analysis.stats.paired_difference`); the baseline itself is left out."""
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


# ----------------------------------------------------------------------------------- markdown

def protocol_sentence(protocol: dict | None) -> str:
    """One run's ``results["protocol"]`` as a sentence ("not recorded" for older runs)."""
    if not protocol:
        return "not recorded (results.json written before runs stated their protocol)"

    def get(key: str) -> str:
        return str(protocol.get(key, "not recorded"))

    if "first_last_bits" not in protocol:
        layers = "first/last-layer bits not recorded"
    elif protocol["first_last_bits"]:
        layers = (f"first and last layers at {protocol['first_last_bits']} bits, "
                  "the others at the evaluated bit-width")
    else:
        layers = "every layer at the evaluated bit-width"
    return (f"{layers}; BatchNorm: {get('batchnorm').rstrip('.')}; "
            f"weight ranges: {get('weight_range')}; activation ranges: {get('act_range')}; "
            f"PTQ: {get('ptq')}; calibration samples: {get('calibration_samples')}; "
            f"validation samples: {get('validation_samples')}.")


def protocol_markdown(methods: Methods) -> str:
    """The protocol all runs share, or the distinct protocols of each method."""
    per_method = {m: [json.dumps(r.get("protocol"), sort_keys=True) for r in runs]
                  for m, runs in methods.items()}
    distinct = {p for ps in per_method.values() for p in ps}
    if len(distinct) == 1:
        runs = sum(len(ps) for ps in per_method.values())
        return f"All {runs} runs: {protocol_sentence(json.loads(distinct.pop()))}\n"
    lines = ["Protocols differ between runs:", ""]
    for method, protocols in per_method.items():
        for p in dict.fromkeys(protocols):
            lines.append(f"- `{method}` ({protocols.count(p)} runs): "
                         + protocol_sentence(json.loads(p)))
    return "\n".join(lines) + "\n"


def figure_rule(last: int, used: dict[str, list[dict[str, int]]]) -> str:
    """The figure definition, and the methods with runs that have fewer than ``last``
    evaluations (the fewest over a run's settings)."""
    text = (f"**Figure:** a run's figure at a setting is the mean of its last {last} evaluations "
            "at rounds >= 1 (round 0, the untrained model, never counts), separately for test "
            "and validation; a cell is the mean ± sample standard deviation of the figures over "
            "the method's seeds.\n")
    notes = []
    for method, runs in used.items():
        short = [n for n in (min(u.values()) for u in runs) if n < last]
        if short:
            lo, hi = min(short), max(short)
            counts = f"{lo}" if lo == hi else f"{lo}-{hi}"
            notes.append(f"`{method}`: {len(short)} of {len(runs)} runs "
                         f"({counts} evaluation{'s' if hi > 1 else ''})")
    if notes:
        text += (f"\nFewer than {last} evaluations (the figure averages those the run has): "
                 + "; ".join(notes) + ".\n")
    return text


def to_markdown(table: Table, settings: list[str]) -> str:
    """``| method | seeds | setting... |`` with cells ``mean ± std`` in %."""
    lines = ["| method | seeds | " + " | ".join(settings) + " |",
             "|---|---|" + "---|" * len(settings)]
    for method, cells in table.items():
        n = max(c.n for c in cells.values())
        row = [f"{100 * cells[s].mean:.2f} ± {100 * cells[s].std:.2f}" if s in cells else ""
               for s in settings]
        lines.append(f"| {method} | {n} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def _points(x: float) -> str:
    return f"{100 * x:+.2f}"


def paired_markdown(pairs: Pairs, baseline: str, settings: list[str]) -> str:
    """One row per method and setting: A - B in points, its 95% interval, verdict, n."""
    lines = [f"\n## Paired test differences against `{baseline}` (percentage points)\n",
             f"A = the row's method, B = `{baseline}`; d = A − B per seed, over the seeds both "
             "have; mean d ± t(0.975, n−1) · sd(d) / √n; a verdict only where the 95% interval "
             "excludes 0.\n",
             "| method | setting | A − B | 95% interval | verdict | n |",
             "|---|---|---|---|---|---|"]
    for method, cells in pairs.items():
        for s in (s for s in settings if s in cells):
            p = cells[s]
            interval = f"[{_points(p.low)}, {_points(p.high)}]" if p.n > 1 else "—"
            diff = _points(p.mean) if p.n else "—"
            lines.append(f"| {method} | {s} | {diff} | {interval} | {p.verdict} | {p.n} |")
    if not pairs:
        lines.append("| (no other method) | | | | | |")
    return "\n".join(lines) + "\n"


def profiles_markdown(methods: Methods) -> str:
    """Mean +- std final test accuracy of each device profile at each setting it deploys
    ('' without profiles)."""
    lines = []
    for method, runs in methods.items():
        cells: dict[tuple[str, str], list[float]] = {}
        for run in runs:
            for profile, accs in (run.get("per_profile") or {}).items():
                for setting, acc in accs.items():
                    cells.setdefault((profile, setting), []).append(acc)
        for (profile, setting), values in cells.items():
            s = mean_std(values)
            lines.append(f"| {method} | {profile} | {setting} | "
                         f"{100 * s.mean:.2f} ± {100 * s.std:.2f} |")
    if not lines:
        return ""
    return ("\n## Per device profile (final test accuracy)\n\n"
            "| method | profile | setting | accuracy |\n|---|---|---|---|\n"
            + "\n".join(lines) + "\n")


def rounds_markdown(curve: dict[str, dict[int, dict[str, float]]], shown: list[str]) -> str:
    """Test accuracy per evaluated round (mean over seeds), cells ``a / b / ...`` for ``shown``."""
    rounds = sorted({r for per_round in curve.values() for r in per_round})
    if not rounds:
        return ""
    lines = [f"\n## Test accuracy per round (mean over seeds; {' / '.join(shown)})\n",
             "| method | " + " | ".join(str(r) for r in rounds) + " |",
             "|---|" + "---|" * len(rounds)]
    for method, per_round in curve.items():
        cells = [" / ".join(f"{100 * per_round[r][s]:.1f}" for s in shown
                            if s in per_round.get(r, {})) for r in rounds]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def wall_time_line(methods: Methods) -> str:
    times = [r["wall_time_s"] for runs in methods.values() for r in runs if "wall_time_s" in r]
    if not times:
        return ""
    return (f"\n{len(times)} jobs; their wall times sum to {sum(times) / 60:.1f} min "
            f"({min(times):.0f}-{max(times):.0f} s per job).\n")


# ---------------------------------------------------------------------------------------- csv

CSV_COLUMNS = ["method", "setting", "mean_accuracy", "std_accuracy", "seeds", "last_k",
               "min_evaluations", "val_mean_accuracy", "val_std_accuracy", "val_seeds", "baseline",
               "paired_diff", "paired_ci_low", "paired_ci_high", "paired_verdict", "paired_seeds"]


def to_csv(test: Table, validation: Table, pairs: Pairs, last: int,
           used: dict[str, list[dict[str, int]]], baseline: str | None = None) -> str:
    """One row per method and setting (:data:`CSV_COLUMNS`): accuracies and differences as
    fractions, ``min_evaluations`` the fewest test evaluations a run's figure averaged; empty
    cells where there is no validation split or no pairing."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(CSV_COLUMNS)
    for method, cells in test.items():
        for setting, t in cells.items():
            v = validation.get(method, {}).get(setting)
            p = pairs.get(method, {}).get(setting)
            fewest = min(u[setting] for u in used[method] if setting in u)
            writer.writerow([method, setting, t.mean, t.std, t.n, last, fewest,
                             *((v.mean, v.std, v.n) if v else ("",) * 3), baseline or "",
                             *((p.mean, p.low, p.high, p.verdict, p.n) if p else ("",) * 5)])
    return buf.getvalue()


# ------------------------------------------------------------------------------------- report

def report_dir(roots: list[Path], out: Path | None) -> Path:
    """Where the report goes: ``out``, else the one folder given."""
    if out is None and len(roots) > 1:
        raise ReportError("several sweeps given: say where the combined report goes with --out DIR")
    return out or roots[0]


def chance_level(methods: Methods) -> float | None:
    """1 / number of classes when every run is on the same known dataset, else None."""
    names = {((r.get("config") or {}).get("dataset") or {}).get("name")
             for runs in methods.values() for r in runs}
    name = names.pop() if len(names) == 1 else None
    return 1 / NUM_CLASSES[name] if name in NUM_CLASSES else None


def report_markdown(methods: Methods, missing: list[Path], last: int, test: Table,
                    validation: Table, baseline: str | None, pairs: Pairs) -> str:
    """report.md: protocol and figure rule, test, validation, paired, per-profile and per-round
    tables, wall time and missing jobs."""
    settings = list(dict.fromkeys(s for cells in test.values() for s in cells))
    text = ("## Protocol\n\n" + protocol_markdown(methods) + "\n"
            + figure_rule(last, evaluations_used(methods, last))
            + "\n## Test accuracy (%)\n\n" + to_markdown(test, settings))
    if validation:
        shown = [s for s in settings if any(s in c for c in validation.values())]
        text += ("\n## Validation accuracy (%): choices are made on this table; "
                 "test is only reported\n\n" + to_markdown(validation, shown))
    if baseline is not None:
        text += paired_markdown(pairs, baseline, settings)
    text += profiles_markdown(methods) + rounds_markdown(curves(methods), _shown(settings))
    text += wall_time_line(methods)
    if missing:
        text += ("\nJobs without results (failed or unfinished): "
                 + ", ".join(str(m) for m in missing) + "\n")
    return text


def _shown(settings: list[str]) -> list[str]:
    """The settings of the per-round table and plot: fp, w4a4 and the last full-model one (not a
    width level's ``<setting>@<r>``), when present."""
    full = [s for s in settings if "@" not in s] or settings
    return list(dict.fromkeys(s for s in ("fp", "w4a4", full[-1]) if s in settings))


def make_report(roots: list[Path], out: Path | None = None, *, last: int = 3,
                baseline: str | None = None) -> str:
    """Writes :data:`REPORT_FILES` to :func:`report_dir` and returns report.md's text."""
    if last < 1:
        raise ReportError(f"--last must be at least 1, got {last}")
    methods, missing = collect(roots)
    if not methods:
        where = " ".join(str(r) for r in roots)
        raise ReportError(f"no results.json under {where}: pass the directory of a finished sweep "
                          "(multirun/<date>/<time>)")
    out = report_dir(roots, out)
    pairs = paired(methods, baseline, last) if baseline is not None else {}
    test, validation = summarize(methods, last), summarize(methods, last, "validation")
    markdown = report_markdown(methods, missing, last, test, validation, baseline, pairs)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "report.md", markdown)
    write_text_atomic(out / "report.csv", to_csv(test, validation, pairs, last,
                                                 evaluations_used(methods, last), baseline))
    write_plots(methods, test, last, out, roots[0].name if len(roots) == 1 else out.name)
    return markdown


def write_plots(methods: Methods, test: Table, last: int, out: Path, name: str) -> None:
    """report.png (test figure vs bit-width) and report_rounds.png (test accuracy vs round)."""
    means = {m: {s: (c.mean, c.std) for s, c in cells.items()} for m, cells in test.items()}
    title = (f"Test accuracy vs bit-width ({name})\n"
             f"a run's figure: mean of its last {last} evaluations")
    plot_methods_vs_bits(means, out / "report.png", title, chance_level(methods))
    settings = list(dict.fromkeys(s for cells in test.values() for s in cells))
    plot_methods_vs_round(curves(methods), _shown(settings), out / "report_rounds.png",
                          f"Test accuracy vs round, mean over seeds ({name})")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fedquant.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dirs", type=Path, nargs="+", metavar="SWEEP",
                        help="Hydra multirun directories, or single job folders")
    parser.add_argument("--out", type=Path, default=None,
                        help="where to write report.* (default: the sweep directory, if only one)")
    parser.add_argument("--last", type=int, default=3, metavar="K",
                        help="a run's figure is the mean of its last K evaluations (default 3)")
    parser.add_argument("--baseline", default=None, metavar="LABEL",
                        help="add paired per-seed differences of every method against this label")
    args = parser.parse_args(argv)
    try:
        for d in args.sweep_dirs:
            if not d.is_dir():
                raise ReportError(f"{d} is not a directory: pass a multirun/<date>/<time> folder")
        markdown = make_report(args.sweep_dirs, args.out, last=args.last, baseline=args.baseline)
    except ReportError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    sys.stdout.write(markdown)
    print(f"\nwrote {', '.join(REPORT_FILES)} in {report_dir(args.sweep_dirs, args.out)}")


if __name__ == "__main__":
    main()
