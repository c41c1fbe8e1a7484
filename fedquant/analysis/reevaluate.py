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
import copy
import json
import shutil
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

from ..experiment.specs import build_evaluator, evaluation_settings, experiment_specs
from ..experiment.workspace import build_quantized_model, federated_data
from ..federation.profiles import per_profile, profiles_from_config
from ..learning.evaluation import PTQ_METHODS
from ..quant.config import ACT_RANGES, WEIGHT_RANGES
from ..runtime.checkpoint import CheckpointError, evaluated_state, list_checkpoints, load_checkpoint
from ..streams import Stream, stream_rng
from ..tracking.results import write_json


def calibration_draws(evaluator, state: dict, draws: int, size: int, seed: int) -> dict[str, dict]:
    """Test accuracy per setting over ``draws`` seeded random subsets of ``size`` calibration
    images: ``{setting: {"mean", "std", "n", "size"}}`` (sample std)."""
    pool = evaluator.calibration
    if not 1 <= size <= len(pool):
        raise ValueError(f"--calibration-size={size} is not valid: allowed is 1..{len(pool)} (the calibration split)")
    accs: dict[str, list[float]] = {}
    for d in range(draws):
        pick = np.sort(stream_rng(seed, Stream.CALIBRATION_DRAW, d).choice(len(pool), size, replace=False))
        fields = {"calibration": pool[torch.from_numpy(pick)], "validation": evaluator.validation[:0]}  # test only
        drawn = evaluator.with_data(**fields)
        for setting, metrics in drawn(state)["test"].items():
            accs.setdefault(setting, []).append(metrics["accuracy"])
    return {s: {"mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0, "n": len(v),
                "size": size} for s, v in accs.items()}


def reevaluate_job(job: Path, out: Path, options: dict, only: list[str] | None = None, draws: int = 0,
                   draw_size: int | None = None, last: int = 1) -> dict:
    """Re-evaluate the final model of ``job`` (and the models of its ``last - 1`` checkpoints
    before it, when kept) with the ``eval`` ``options`` given (e.g. ``{"ptq": "adaround",
    "weight_range": "mse"}``) and write ``out/<job>/results.json``."""
    results = json.loads((job / "results.json").read_text())
    cfg = copy.deepcopy(results["config"])
    checkpoints = list_checkpoints(job)[-last:]
    if not checkpoints:
        raise CheckpointError(f"{job}: no checkpoint of the final model (was checkpoint.every=0?)")
    payloads = [load_checkpoint(c) for c in checkpoints]
    if payloads[-1]["round"] != cfg["num_rounds"]:
        raise CheckpointError(f"{checkpoints[-1]}: holds round {payloads[-1]['round']}, not the final round "
                              f"{cfg['num_rounds']}")
    cfg["eval"].update(options)
    if not cfg["eval"]["reestimate_bn"] and any(p.width < 1 for p in profiles_from_config(cfg["strategy"]["profiles"])):
        raise ValueError(f"{job}: --bn keep is not valid for a run with width profiles (sub-models need the BatchNorm "
                         "statistics the server re-estimates)")
    data_spec, model_spec = experiment_specs(cfg)
    fed = federated_data(data_spec)
    settings = evaluation_settings(cfg, only, "--settings")
    evaluator = build_evaluator(cfg, build_quantized_model(model_spec, fed.data, seed=cfg["seed"]), fed, settings)
    rounds = []
    for payload in payloads:
        evaluation = evaluator(evaluated_state(payload))
        rounds.append({"round": payload["round"], "eval": evaluation["test"]}
                      | ({"validation": evaluation["validation"]} if evaluation["validation"] else {}))
    final = {k: v["accuracy"] for k, v in rounds[-1]["eval"].items()}
    new = {"config": cfg, "protocol": evaluator.describe(), "rounds": rounds, "final": final,
           "final_validation": {k: v["accuracy"] for k, v in rounds[-1].get("validation", {}).items()},
           "per_profile": per_profile(profiles_from_config(cfg["strategy"]["profiles"]), final),
           "wall_time_s": results["wall_time_s"],
           "reevaluated": {"checkpoints": [str(c) for c in checkpoints], **options}}
    if draws:
        size = draw_size or max(1, len(fed.calibration) // 2)
        new["calibration_draws"] = calibration_draws(evaluator, evaluated_state(payloads[-1]), draws, size, cfg["seed"])
    target = out / job.name
    target.mkdir(parents=True, exist_ok=True)
    if (job / ".hydra").is_dir():
        shutil.copytree(job / ".hydra", target / ".hydra", dirs_exist_ok=True)
    write_json(target / "results.json", new)
    return new


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fedquant.reevaluate", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path, help="a finished Hydra multirun directory")
    parser.add_argument("--out", type=Path, required=True, help="where the re-evaluated jobs are written")
    parser.add_argument("--weight-range", choices=WEIGHT_RANGES, help="weight range (default: the run's)")
    parser.add_argument("--act-range", choices=ACT_RANGES, help="activation range (default: the run's)")
    parser.add_argument("--ptq", choices=PTQ_METHODS, help="post-training quantization (default: the run's)")
    parser.add_argument("--adaround-iterations", type=int, help="AdaRound iterations per layer")
    parser.add_argument("--bias-correction", choices=("on", "off"), help="empirical bias correction (default: the run's)")
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
    jobs = sorted(p.parent for p in args.sweep_dir.glob("*/results.json"))
    if not jobs:
        print(f"error: no */results.json under {args.sweep_dir}: pass the directory of a finished sweep", file=sys.stderr)
        sys.exit(2)
    for i, job in enumerate(jobs, 1):
        if (args.out / job.name / "results.json").is_file():
            print(f"[{i}/{len(jobs)}] {job.name}: already in {args.out}, skipped")
            continue
        try:
            new = reevaluate_job(job, args.out, options, args.settings, args.calibration_draws, args.calibration_size,
                                 args.last)
        except (CheckpointError, ValueError) as err:
            print(f"error: {job.name}: {err}", file=sys.stderr)
            continue
        line = " ".join(f"{k} {100 * v:.2f}" for k, v in new["final"].items())
        if "calibration_draws" in new:
            line += " | calibration draws: " + " ".join(f"{k} ±{100 * v['std']:.2f}"
                                                        for k, v in new["calibration_draws"].items())
        print(f"[{i}/{len(jobs)}] {job.name}: {line}", flush=True)
    print(f"re-evaluated jobs in {args.out}; tables: python -m fedquant.report {args.out}")


if __name__ == "__main__":
    main()
