"""Re-evaluation of one finished job (:func:`reevaluate_job`) and the calibration-draw study
(:func:`calibration_draws`); the command line is :mod:`fedquant.reevaluate.__main__`."""

from __future__ import annotations

import json
import shutil
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from ..experiment.config import with_overrides
from ..experiment.specs import evaluation_settings, experiment_specs, run_profiles, server_evaluator
from ..experiment.workspace import federated_data
from ..federation.profiles import per_profile
from ..learning.evaluation import MIXED_PRECISION_MEASURE
from ..runtime.checkpoint import CheckpointError, evaluated_state, list_checkpoints, load_checkpoint
from ..streams import Stream, stream_rng
from ..tracking.progress import Steps
from ..tracking.results import write_json


def calibration_draws(evaluator, state: dict, draws: int, size: int, seed: int,
                      steps: Steps | None = None) -> dict[str, dict]:
    """Test accuracy per setting over ``draws`` seeded random subsets of ``size`` calibration
    images: ``{setting: {"mean", "std", "n", "size"}}`` (sample std); ``steps`` shows the
    draw and setting running."""
    pool = evaluator.calibration
    if not 1 <= size <= len(pool):
        raise ValueError(f"--calibration-size={size} is not valid: allowed is 1..{len(pool)} (the calibration split)")
    accs: dict[str, list[float]] = {}
    for d in range(draws):
        pick = np.sort(stream_rng(seed, Stream.CALIBRATION_DRAW, d).choice(len(pool), size, replace=False))
        fields = {"calibration": pool[torch.from_numpy(pick)], "validation": evaluator.validation[:0]}  # test only
        drawn = evaluator.with_data(**fields)
        hook = steps.stage(f"calibration draw {d + 1}/{draws}", lines=False) if steps is not None else None
        for setting, metrics in drawn(state, on_setting=hook)["test"].items():
            accs.setdefault(setting, []).append(metrics["accuracy"])
    return {s: {"mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0, "n": len(v),
                "size": size} for s, v in accs.items()}


def reevaluate_job(job: Path, out: Path, options: dict, only: list[str] | None = None, draws: int = 0,
                   draw_size: int | None = None, last: int = 1, steps: Steps | None = None) -> dict:
    """Re-evaluate the final model of ``job`` (and the models of its ``last - 1`` checkpoints
    before it, when kept) with the ``eval`` ``options`` given (e.g. ``{"ptq": "adaround",
    "weight_range": "mse"}``) and write ``out/<job>/results.json``. ``steps`` shows the job's
    progress: a line per evaluated setting, the setting running."""
    started = time.perf_counter()
    if steps is not None:
        steps.update("loading its checkpoints and data")
    results = json.loads((job / "results.json").read_text())
    cfg = with_overrides(results["config"], {f"eval.{k}": v for k, v in options.items()})
    checkpoints = list_checkpoints(job)[-last:]
    if not checkpoints:
        raise CheckpointError(f"{job}: no checkpoint of the final model (was checkpoint.every=0?)")
    payloads = [load_checkpoint(c) for c in checkpoints]
    if payloads[-1]["round"] != cfg["num_rounds"]:
        raise CheckpointError(f"{checkpoints[-1]}: holds round {payloads[-1]['round']}, not the final round "
                              f"{cfg['num_rounds']}")
    if steps is not None:
        steps.title += f" ({cfg['eval']['ptq']} PTQ)"
    fed = federated_data(experiment_specs(cfg)[0])
    evaluator = server_evaluator(cfg, fed, evaluation_settings(cfg, only, "--settings"))
    rounds = []
    for payload in payloads:
        hook = steps.stage(f"round {payload['round']}") if steps is not None and len(payloads) > 1 else steps
        evaluation = evaluator(evaluated_state(payload), on_setting=hook)
        rounds.append({"round": payload["round"], "eval": evaluation["test"]}
                      | ({"validation": evaluation["validation"]} if evaluation["validation"] else {})
                      | ({"mixed_precision": evaluation["mixed_precision"]} if evaluation.get("mixed_precision") else {}))
    final = {k: v["accuracy"] for k, v in rounds[-1]["eval"].items()}
    new = {"config": cfg, "protocol": evaluator.describe(), "rounds": rounds, "final": final,
           "final_validation": {k: v["accuracy"] for k, v in rounds[-1].get("validation", {}).items()},
           "per_profile": per_profile(run_profiles(cfg), final),
           "reevaluated": {"checkpoints": [str(c) for c in checkpoints], **options},
           "training_wall_time_s": results["wall_time_s"]}
    if rounds[-1].get("mixed_precision"):  # re-solved under the new protocol: the assignment may differ
        new["mixed_precision"] = {"measure": MIXED_PRECISION_MEASURE} | rounds[-1]["mixed_precision"]
    if draws:
        size = draw_size or max(1, len(fed.calibration) // 2)
        new["calibration_draws"] = calibration_draws(evaluator, evaluated_state(payloads[-1]), draws, size, cfg["seed"],
                                                     steps)
    if steps is not None:
        steps.done()
    new["wall_time_s"] = time.perf_counter() - started  # this re-evaluation's; the training's is beside it
    target = out / job.name
    target.mkdir(parents=True, exist_ok=True)
    if (job / ".hydra").is_dir():
        shutil.copytree(job / ".hydra", target / ".hydra", dirs_exist_ok=True)
    write_json(target / "results.json", new)
    return new


def mean_of_rounds(new: dict) -> dict[str, float]:
    """Test accuracy per setting averaged over the re-evaluated rounds (the report's figure for a
    run re-evaluated with ``--last K``: the mean of its last K evaluations)."""
    rounds = [r["eval"] for r in new["rounds"]]
    return {k: statistics.fmean(r[k]["accuracy"] for r in rounds) for k in rounds[-1]}
