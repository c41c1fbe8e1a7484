"""``python -m fedquant.reevaluate <sweep dir> --out DIR``: test a sweep's final models again with
other server-side evaluation options (weight/activation ranges, PTQ method, BatchNorm rule),
without retraining; optionally measure how much the numbers depend on which calibration images
were drawn.

For every job with a ``results.json``, the newest checkpoint of that run (the final global model;
with ``--last K`` the newest K checkpoints) is evaluated at the same settings (or ``--settings``) with the options given here; jobs already
in ``DIR`` are skipped, so it can be run again as a sweep progresses. Each job is written to
``DIR/<job>/results.json`` (``final``, ``final_validation``, ``per_profile``, the last round's
``eval``/``validation``, the ``protocol`` and a ``reevaluated`` entry saying how) beside a copy of
its ``.hydra`` folder, so that ``python -m fedquant.report DIR`` turns the result into the same
tables and plots. With ``--calibration-draws N`` the model is also evaluated with N random
subsets of ``--calibration-size`` images of the calibration split (seeded), and the mean and
standard deviation of the test accuracy per setting are recorded (``calibration_draws``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..learning.evaluation import PTQ_METHODS
from ..quant.config import ACT_RANGES, WEIGHT_RANGES
from ..runtime.checkpoint import CheckpointError
from ..tracking.progress import Progress, Steps, seconds
from .jobs import mean_of_rounds, reevaluate_job

DESCRIPTION = ("Test a sweep's final models again with other server-side evaluation options (weight and "
               "activation ranges, PTQ method, BatchNorm rule), without retraining; optionally measure how "
               "much the numbers depend on which calibration images were drawn.")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fedquant.reevaluate", description=DESCRIPTION)
    parser.add_argument("sweep_dir", type=Path, help="a finished Hydra multirun directory")
    parser.add_argument("--out", type=Path, required=True, help="where the re-evaluated jobs are written")
    parser.add_argument("--weight-range", choices=WEIGHT_RANGES, help="weight range (default: the run's)")
    parser.add_argument("--act-range", choices=ACT_RANGES, help="activation range (default: the run's)")
    parser.add_argument("--ptq", choices=PTQ_METHODS, help="post-training quantization (default: the run's)")
    parser.add_argument("--adaround-iterations", type=int, help="AdaRound iterations per layer")
    parser.add_argument("--bias-correction", choices=("on", "off"), help="empirical bias correction (default: the run's)")
    parser.add_argument("--bias", choices=("int32", "float"),
                        help="biases of quantized layers: int32 on s_x s_w as deployed, or float (default: the "
                             "run's eval.integer_bias; runs from before that option: int32)")
    parser.add_argument("--bn", choices=("reestimate", "keep"),
                        help="BatchNorm rule for every setting (default: the run's)")
    parser.add_argument("--settings", nargs="+", default=None,
                        help="evaluate only these settings (default: the run's eval.settings; every "
                             "device profile's settings are always added)")
    parser.add_argument("--last", type=int, default=1, metavar="K",
                        help="re-evaluate the models of the newest K checkpoints (K evaluations for the "
                             "report's mean of the last evaluations; checkpoint.keep must have kept them)")
    parser.add_argument("--calibration-draws", type=int, default=0, metavar="N",
                        help="also evaluate with N random calibration subsets and record mean and std")
    parser.add_argument("--calibration-size", type=int, default=None, metavar="K",
                        help="images per calibration draw (default: half of the calibration split)")
    args = parser.parse_args(argv)
    options = {k: v for k, v in (("weight_range", args.weight_range), ("act_range", args.act_range),
                                 ("ptq", args.ptq), ("adaround_iterations", args.adaround_iterations)) if v is not None}
    if args.bn:
        options["reestimate_bn"] = args.bn == "reestimate"
    if args.bias_correction:
        options["bias_correction"] = args.bias_correction == "on"
    if args.bias:
        options["integer_bias"] = args.bias == "int32"
    jobs = sorted(p.parent for p in args.sweep_dir.glob("*/results.json"))
    if not jobs:
        print(f"error: no */results.json under {args.sweep_dir}: pass the directory of a finished sweep", file=sys.stderr)
        sys.exit(2)
    progress = Progress()  # on a terminal a live line; in logs a line per setting (fedquant.tracking.progress)
    try:
        for i, job in enumerate(jobs, 1):
            reevaluate_one(args, options, i, len(jobs), job, progress)
    finally:
        progress.close()
    print(f"re-evaluated jobs in {args.out}; tables: python -m fedquant.report {args.out} --last {args.last}")


def reevaluate_one(args: argparse.Namespace, options: dict, i: int, n: int, job: Path, progress: Progress) -> None:
    """Job ``i`` of ``n``: skipped when already in ``--out``, else re-evaluated (its settings
    shown by ``progress``), ending with one line: its figures and how long it took."""
    if (args.out / job.name / "results.json").is_file():
        print(f"[{i}/{n}] {job.name}: already in {args.out}, skipped")
        return
    steps = Steps(progress, f"[{i}/{n}] {job.name}")
    try:
        new = reevaluate_job(job, args.out, options, args.settings, args.calibration_draws, args.calibration_size,
                             args.last, steps)
    except (CheckpointError, ValueError) as err:
        progress.close()
        print(f"error: {job.name}: {err}", file=sys.stderr)
        return
    progress.close()
    kept = len(new["rounds"])
    if kept < args.last:
        print(f"[{i}/{n}] {job.name}: note: --last {args.last} asked for {args.last} checkpoints, the run "
              f"has {kept} (its num_rounds, checkpoint.every and checkpoint.keep): the figure is the mean of {kept}")
    label = "final model" if kept == 1 else f"mean of the last {kept} evaluations"
    line = f"{label}: " + " ".join(f"{k} {100 * v:.2f}" for k, v in mean_of_rounds(new).items())
    if "calibration_draws" in new:
        line += " | calibration draws: " + " ".join(f"{k} ±{100 * v['std']:.2f}"
                                                    for k, v in new["calibration_draws"].items())
    print(f"[{i}/{n}] {job.name}: {line} ({seconds(new['wall_time_s'])})", flush=True)


if __name__ == "__main__":
    main()
