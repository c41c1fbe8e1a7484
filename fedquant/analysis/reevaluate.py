"""``python -m fedquant.reevaluate <sweep dir> --out DIR``: test a sweep's final models again with
other server-side evaluation options (e.g. MSE activation ranges), without retraining.

For every job with a ``results.json``, the newest checkpoint of that run (the final global model)
is evaluated at the same settings (or ``--settings``) with the options given here; jobs already
in ``DIR`` are skipped, so it can be run again as a sweep progresses. Each job is written to
``DIR/<job>/results.json`` (``final``, ``per_profile``, the last round's ``eval``, and a
``reevaluated`` entry saying how) beside a copy of its ``.hydra`` folder, so that
``python -m fedquant.report DIR`` turns the result into the same tables and plots.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import sys
from pathlib import Path

from ..experiment.specs import build_evaluator, evaluation_settings, experiment_specs
from ..experiment.workspace import build_quantized_model, federated_data
from ..federation.profiles import per_profile, profiles_from_config
from ..quant.config import ESTIMATORS
from ..runtime.checkpoint import CheckpointError, list_checkpoints, load_checkpoint
from ..tracking.results import write_json


def reevaluate_job(job: Path, out: Path, estimator: str, reestimate_bn: bool, only: list[str] | None = None) -> dict:
    results = json.loads((job / "results.json").read_text())
    cfg = results["config"]
    checkpoints = list_checkpoints(job)
    if not checkpoints:
        raise CheckpointError(f"{job}: no checkpoint of the final model (was checkpoint.every=0?)")
    payload = load_checkpoint(checkpoints[-1])
    last_round = max(int(r) for r in payload["evals"]) if payload.get("evals") else cfg["num_rounds"]
    if last_round != cfg["num_rounds"]:
        raise CheckpointError(f"{checkpoints[-1]}: holds round {last_round}, not the final round {cfg['num_rounds']}")
    data_spec, model_spec = experiment_specs(cfg)
    fed = federated_data(data_spec)
    settings = evaluation_settings(cfg, only, "--settings") if only else evaluation_settings(cfg)
    evaluator = build_evaluator(cfg, build_quantized_model(model_spec, fed.data, seed=cfg["seed"]), fed, settings,
                                estimator=estimator, reestimate_bn=reestimate_bn)
    evals = evaluator(payload["arrays"])
    final = {k: v["accuracy"] for k, v in evals.items()}
    new = {"config": copy.deepcopy(cfg), "rounds": [{"round": cfg["num_rounds"], "eval": evals}], "final": final,
           "per_profile": per_profile(profiles_from_config(cfg["strategy"]["profiles"]), final), "wall_time_s": results["wall_time_s"],
           "reevaluated": {"checkpoint": str(checkpoints[-1]), "estimator": estimator, "reestimate_bn": reestimate_bn}}
    new["config"]["eval"].update(estimator=estimator, reestimate_bn=reestimate_bn)
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
    parser.add_argument("--estimator", default="mse", choices=ESTIMATORS, help="activation range setting")
    parser.add_argument("--no-reestimate-bn", dest="reestimate_bn", action="store_false",
                        help="keep the trained BatchNorm statistics")
    parser.add_argument("--settings", nargs="+", default=None,
                        help="evaluate only these settings (default: the run's eval.settings; every "
                             "device profile's settings are always added)")
    args = parser.parse_args(argv)
    jobs = sorted(p.parent for p in args.sweep_dir.glob("*/results.json"))
    if not jobs:
        raise SystemExit(f"error: no */results.json under {args.sweep_dir}: pass the directory of a finished sweep")
    for i, job in enumerate(jobs, 1):
        if (args.out / job.name / "results.json").is_file():
            print(f"[{i}/{len(jobs)}] {job.name}: already in {args.out}, skipped")
            continue
        try:
            final = reevaluate_job(job, args.out, args.estimator, args.reestimate_bn, args.settings)["final"]
        except CheckpointError as err:
            print(f"error: {err}", file=sys.stderr)
            continue
        print(f"[{i}/{len(jobs)}] {job.name}: " + " ".join(f"{k} {100 * v:.2f}" for k, v in final.items()), flush=True)
    print(f"re-evaluated jobs in {args.out}; tables: python -m fedquant.report {args.out}")


if __name__ == "__main__":
    main()
