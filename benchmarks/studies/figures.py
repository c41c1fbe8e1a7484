"""A study's numbers as files anyone can check, and the tables generated from them.

``python -m benchmarks.studies.figures collect ROOT --out docs/data/NAME`` writes
``NAME.csv`` (one row per run, split and setting: the run's figure, the mean of its last
``--last`` evaluations, and which rounds those were) and ``NAME.env.json`` (the machine and
library versions). ``ROOT`` holds ``<arm>/<seed>/results.json`` (``benchmarks.studies.study``);
a post-training re-evaluation of an arm (``python -m fedquant.reevaluate ROOT/<arm> --out DIR``)
joins as ``--option ARM+LABEL=DIR`` (its runs are ``DIR/<seed>/results.json``).

``python -m benchmarks.studies.figures table NAME.csv --pair A B [--pair ...] [--choose
BEST=A,B,...]`` prints, from the CSV alone, each arm's mean +- sd over seeds per setting (test and
validation) and each pair's paired test difference A - B with its 95% t-interval and verdict
(:func:`fedquant.report.stats.paired_difference`); ``--choose`` makes an arm of the best of
several per setting, chosen on their validation figures only; ``--contrast A:S B:T`` pairs arm A
at setting S with arm B at setting T (e.g. a mixed-precision assignment against the best uniform
setting that fits the same budget).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
from collections import defaultdict
from importlib import metadata
from pathlib import Path

from fedquant.report.stats import last_k_figure, mean_std, paired_difference

FIELDS = ["arm", "seed", "split", "setting", "figure", "rounds", "ptq", "training_wall_time_s"]
ISA = ("sse4_2", "fma", "avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile")


def environment() -> dict:
    """The CPU (model, ISA extensions, the kernels torch picks), thread count and versions that
    a run's floating-point results depend on."""
    import torch

    cpu, flags = platform.processor(), set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name") and cpu in ("", platform.processor()):
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    versions = {}
    for package in ("torch", "flwr", "ray", "numpy", "hydra-core", "fedquant"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {"cpu": cpu, "cores": os.cpu_count(), "isa": [f for f in ISA if f in flags],
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "platform": platform.platform(), "versions": versions}


def _describe_ptq(results: dict) -> str:
    p = results.get("protocol") or {}
    return " ".join(str(p.get(k)) for k in ("ptq", "weight_range", "act_range", "bias") if p.get(k) is not None)


def run_rows(arm: str, seed: int, results: dict, last: int) -> list[dict]:
    """A run's figure per split and setting, with the rounds it averages."""
    rows = []
    for split, key in (("test", "eval"), ("validation", "validation")):
        figure = last_k_figure(results.get("rounds", []), key, last)
        if figure is None:
            continue
        for setting, value in figure.values.items():
            rounds = [r["round"] for r in results["rounds"] if r["round"] >= 1 and setting in (r.get(key) or {})]
            rows.append({"arm": arm, "seed": seed, "split": split, "setting": setting, "figure": f"{value:.6f}",
                         "rounds": ";".join(map(str, rounds[-figure.used[setting]:])), "ptq": _describe_ptq(results),
                         "training_wall_time_s": results.get("training_wall_time_s", results.get("wall_time_s"))})
    return rows


def _runs(folder: Path) -> list[tuple[int, dict]]:
    return sorted((int(p.parent.name), json.loads(p.read_text())) for p in folder.glob("*/results.json")
                  if p.parent.name.isdigit())


def collect(root: Path, options: list[str], out: Path, last: int) -> Path:
    """Write ``out``.csv and ``out``.env.json; returns the CSV's path."""
    rows = []
    for arm_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for seed, results in _runs(arm_dir):
            rows += run_rows(arm_dir.name, seed, results, last)
    for option in options:
        label, _, folder = option.partition("=")
        if not folder:
            raise SystemExit(f"error: --option {option!r}: expected ARM+LABEL=DIR")
        for seed, results in _runs(Path(folder)):
            rows += run_rows(label, seed, results, last)
    if not rows:
        raise SystemExit(f"error: no <arm>/<seed>/results.json under {root}")
    out.parent.mkdir(parents=True, exist_ok=True)
    csv_path = out.with_suffix(".csv")
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    out.with_suffix(".env.json").write_text(json.dumps(environment(), indent=2) + "\n")
    return csv_path


def read_figures(path: Path) -> dict[tuple[str, str, str], dict[int, float]]:
    """(arm, split, setting) -> seed -> figure, from a CSV :func:`collect` wrote."""
    out: dict[tuple[str, str, str], dict[int, float]] = defaultdict(dict)
    with path.open() as f:
        for row in csv.DictReader(f):
            out[row["arm"], row["split"], row["setting"]][int(row["seed"])] = float(row["figure"])
    return out


def choose(figures: dict, name: str, members: list[str]) -> list[str]:
    """Add arm ``name`` to ``figures``: per setting, the member arm whose mean validation figure
    (over its seeds) is highest, its test and validation figures taken whole (the test figures
    never take part in the choice; members are compared on the seeds they all have). Returns one
    line per setting saying what was chosen."""
    settings = list(dict.fromkeys(s for arm, split, s in figures if arm in members and split == "validation"))
    said = []
    for setting in settings:
        held = {arm: v for arm in members if (v := figures.get((arm, "validation", setting)))}
        shared = set.intersection(*(set(v) for v in held.values()))  # compared on the seeds every member has
        scored = [(mean_std([v[seed] for seed in sorted(shared)]).mean, arm) for arm, v in held.items() if shared]
        if not scored:
            continue
        best = max(scored)[1]
        for split in ("test", "validation"):
            figures[name, split, setting] = dict(figures.get((best, split, setting), {}))
        said.append(f"{name} {setting}: {best} (validation {100 * max(scored)[0]:.2f})")
    return said


def _difference_cell(a: dict[int, float], b: dict[int, float]) -> str:
    p = paired_difference(a, b)
    if p.n == 0:
        return p.verdict
    if p.n == 1:
        return f"{100 * p.mean:+.2f} (one seed: not resolved)"
    return f"{100 * p.mean:+.2f} [{100 * p.low:+.2f}, {100 * p.high:+.2f}] {p.verdict} (n={p.n})"


def table(path: Path, pairs: list[tuple[str, str]], settings: list[str] | None,
          chosen: dict[str, list[str]] | None = None, contrasts: list[tuple[str, str]] | None = None) -> str:
    """Markdown: per arm and setting, test and validation mean +- sd (n); then the pairs. Arms
    in ``chosen`` (name -> members) are picked per setting on validation (:func:`choose`)."""
    figures = read_figures(path)
    notes = [line for name, members in (chosen or {}).items() for line in choose(figures, name, members)]
    arms = list(dict.fromkeys(arm for arm, _, _ in figures))
    shown = settings or list(dict.fromkeys(s for _, _, s in figures))
    lines = ["| arm | " + " | ".join(shown) + " |", "|---|" + "---|" * len(shown)]
    for arm in arms:
        cells = []
        for setting in shown:
            test, val = figures.get((arm, "test", setting)), figures.get((arm, "validation", setting))
            if not test:
                cells.append("")
                continue
            t = mean_std(list(test.values()))
            cell = f"{100 * t.mean:.2f} ± {100 * t.std:.2f}" if t.n > 1 else f"{100 * t.mean:.2f}"
            if val:
                cell += f" ({100 * mean_std(list(val.values())).mean:.2f})"
            cells.append(cell + f" n={t.n}")
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    if pairs:
        lines += ["", "| A - B (test, paired over seeds) | " + " | ".join(shown) + " |", "|---|" + "---|" * len(shown)]
        for a, b in pairs:
            cells = [_difference_cell(figures.get((a, "test", s), {}), figures.get((b, "test", s), {})) for s in shown]
            lines.append(f"| {a} - {b} | " + " | ".join(cells) + " |")
    if contrasts:
        lines += ["", "| A:setting - B:setting (test, paired over seeds) | difference |", "|---|---|"]
        for a, b in contrasts:
            (arm_a, _, set_a), (arm_b, _, set_b) = a.partition(":"), b.partition(":")
            cell = _difference_cell(figures.get((arm_a, "test", set_a), {}), figures.get((arm_b, "test", set_b), {}))
            lines.append(f"| {a} - {b} | {cell} |")
    if notes:
        lines += ["", "Chosen on validation: " + "; ".join(notes) + "."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    c = commands.add_parser("collect", help="per-seed figures + environment of a study root")
    c.add_argument("root", type=Path)
    c.add_argument("--out", type=Path, required=True, help="docs/data/NAME (writes NAME.csv, NAME.env.json)")
    c.add_argument("--option", action="append", default=[], help="ARM+LABEL=DIR: a re-evaluated arm")
    c.add_argument("--last", type=int, default=3)
    t = commands.add_parser("table", help="markdown tables from a figures CSV")
    t.add_argument("csv", type=Path)
    t.add_argument("--pair", nargs=2, action="append", default=[], metavar=("A", "B"))
    t.add_argument("--settings", nargs="+")
    t.add_argument("--choose", action="append", default=[], metavar="NAME=A,B,...",
                   help="an arm made of the best of A, B, ... per setting, chosen on validation")
    t.add_argument("--contrast", nargs=2, action="append", default=[], metavar=("A:S", "B:T"),
                   help="arm A at setting S minus arm B at setting T, paired over seeds")
    args = parser.parse_args(argv)
    if args.command == "collect":
        print(f"wrote {collect(args.root, args.option, args.out, args.last)} and its .env.json")
    else:
        if not args.csv.is_file():
            sys.exit(f"error: {args.csv} does not exist: write it with `collect` first")
        chosen = {}
        for spec in args.choose:
            name, _, members = spec.partition("=")
            if not members:
                sys.exit(f"error: --choose {spec!r}: expected NAME=A,B,...")
            chosen[name] = members.split(",")
        print(table(args.csv, [tuple(p) for p in args.pair], args.settings, chosen, [tuple(c) for c in args.contrast]))


if __name__ == "__main__":
    main()
