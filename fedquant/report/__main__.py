"""``python -m fedquant.report SWEEP... [--out DIR] [--last K] [--baseline LABEL]``: comparison
tables and plots for Hydra sweeps.

Jobs are grouped into methods by their experiment and config (seed, ``resume``/``resume_from``,
output and W&B names, checkpointing excluded: a continued run is the same method); a method's
label is its experiment's name and what tells it apart from the others, e.g. ``fmnist_fedavg
client.lr_schedule=cosine`` (:mod:`fedquant.report.runs`). A run's figure at an evaluation
setting is the mean of its last K evaluations at rounds >= 1 (round 0 is the untrained model;
default K=3; a run with fewer uses those it has, and the report and report.png say what was
averaged); each cell is the mean +- sample standard deviation of those figures over the
method's seeds. For runs of ``python -m fedquant.reevaluate`` the report names the options given
there, report.png states the post-training options (PTQ, bias correction, ranges) and the wall
time is the training's (``training_wall_time_s``) beside the re-evaluation's.

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
import sys
from pathlib import Path

from .make import REPORT_FILES, make_report, report_dir
from .runs import ReportError


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
    out = report_dir(args.sweep_dirs, args.out)
    written = [*REPORT_FILES, *(["report_uplink.png"] if (out / "report_uplink.png").is_file() else [])]
    print(f"\nwrote {', '.join(written)} in {out}")


if __name__ == "__main__":
    main()
