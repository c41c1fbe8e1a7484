"""Composition root: config -> data, model, plan, strategy, ClientApp -> Flower simulation -> results.

Wiring only: every step lives in its own package (``experiment``, ``federation``, ``learning``,
``runtime``, ``tracking``, ``strategies``, ``clients``). With ``__main__`` this is the only module
that knows Flower's apps, Ray and W&B together.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from clients import ClientSetup, make_client_app
from strategies import build_strategy, server_options

from .data import DatasetError
from .experiment.config import ConfigError, validate
from .experiment.history import RunHistory
from .experiment.resume import load_resume
from .experiment.rounds import AfterRound, Schedule
from .experiment.specs import build_evaluator, evaluation_settings, experiment_specs, training_plan
from .experiment.workspace import build_quantized_model, federated_data, select_device
from .federation.bitwidths import setting_name
from .federation.protocol import train_record, transport_state
from .runtime.allocator import retain_freed_memory
from .runtime.checkpoint import save_checkpoint
from .runtime.simulation import poll_replies_often, run_flower_simulation
from .tracking import ConsoleReporter
from .tracking.outputs import write_outputs


def check_config(cfg: Mapping) -> None:
    """Raise ``ConfigError`` for the first problem in ``cfg`` (before any data or Ray)."""
    validate(cfg, server_options())


def _load_federated_data(spec):
    """The data, before Ray starts: missing files raise ``DatasetError`` (exit 1); values that are
    only invalid given the data (more clients than images, a hold-out as large as the training
    set) raise ``ConfigError`` naming the key (exit 2)."""
    try:
        return federated_data(spec)
    except DatasetError:
        raise
    except ValueError as err:
        raise ConfigError(str(err)) from None


def _make_logger(cfg: Mapping, output_dir: Path, group: str | None):
    log = cfg["logger"]
    if log["name"] != "wandb":
        return None
    from .tracking.wandb_logger import WandbLogger

    return WandbLogger(cfg, output_dir, mode=log.get("mode"), project=log.get("project", "fedquant"),
                       group=log.get("group") or group, job_type=cfg["strategy"]["name"],
                       entity=log.get("entity"), tags=list(log.get("tags") or []))


def _server_app(strategy, initial_state: dict, num_rounds: int, offset: int, train_config: ConfigRecord,
                after_round: AfterRound) -> ServerApp:
    """A ServerApp that runs ``strategy`` for the rounds after ``offset`` and hands the global
    model to ``after_round`` after each (Flower's ``evaluate_fn``)."""

    def evaluate_fn(flower_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        evaluation = after_round(flower_round + offset, arrays.to_torch_state_dict())
        if evaluation is None:
            return None
        return MetricRecord({f"{split}/{k}/{m}": v[m] for split, evals in evaluation.items()
                             for k, v in evals.items() for m in ("accuracy", "loss")})

    app = ServerApp()

    @app.main()
    def _main(grid: Grid, context: Context) -> None:  # noqa: ARG001 - Flower's signature
        poll_replies_often(grid)
        strategy.start(grid=grid, initial_arrays=ArrayRecord(initial_state), num_rounds=num_rounds - offset,
                       train_config=train_config, evaluate_fn=evaluate_fn)

    return app


def run_experiment(cfg: Mapping, output_dir: str | Path, group: str | None = None,
                   runs_root: Path | None = None) -> dict:
    """Run one federated experiment described by ``cfg`` (a plain mapping); write results.json,
    metrics.csv and plots to ``output_dir``; log to W&B when ``logger.name=wandb``.

    With ``resume=true`` (the newest checkpoint under ``runs_root``, Hydra's output root) or
    ``resume_from=<checkpoint or run dir>`` it continues that run exactly where it stopped.
    """
    started = time.perf_counter()
    check_config(cfg)
    strat, sim = cfg["strategy"], cfg["simulation"]
    if sim["retain_freed_memory"]:
        retain_freed_memory()
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    resumed = load_resume(cfg, output_dir, runs_root)
    data_spec, model_spec = experiment_specs(cfg)
    fed = _load_federated_data(data_spec)
    plan = training_plan(cfg)
    settings = evaluation_settings(cfg)
    model = build_quantized_model(model_spec, fed.data, seed=cfg["seed"])
    evaluator = build_evaluator(cfg, copy.deepcopy(model), fed, settings, select_device(sim["device"]))
    history = RunHistory.from_checkpoint(resumed) if resumed else RunHistory()
    strategy = build_strategy(strat["server"], plan, min_replies=strat["min_replies"],
                              on_too_few=strat["on_too_few_replies"], max_retries=strat["max_retries"],
                              client_work=[len(c) for c in fed.clients], on_report=history.record_train,
                              **strat["server_options"])
    offset, initial_state = 0, transport_state(model)
    if resumed:
        offset, initial_state = resumed["round"], resumed["arrays"]
        strategy.resume_at(offset, resumed["server_state"])
        print(f"resuming {resumed['path']} after round {offset}")
    logger = _make_logger(cfg, output_dir, group)

    def save(server_round: int, state: dict) -> None:
        save_checkpoint(output_dir, server_round, {"arrays": state, "server_state": strategy.server_state(),
                                                   **history.checkpoint_payload(), "config": cfg},
                        keep=cfg["checkpoint"]["keep"])

    reporter = ConsoleReporter(cfg["num_rounds"], quiet=cfg.get("quiet", False))
    schedule = Schedule(cfg["num_rounds"], cfg["eval"]["every"], cfg["eval"].get("initial", True),
                        cfg["checkpoint"]["every"])
    after_round = AfterRound(history, evaluator, schedule, reporter, plan.profiles, save, logger,
                             resumed_round=offset if resumed else None, started=started)
    server_app = _server_app(strategy, initial_state, cfg["num_rounds"], offset, ConfigRecord(train_record(cfg["client"])),
                             after_round)
    client_app = make_client_app(ClientSetup(data_spec, model_spec, threads=max(1, int(sim["num_cpus_per_client"])),
                                             device=sim["device"], retain_freed_memory=sim["retain_freed_memory"]))
    start = time.perf_counter()
    results = plots = None
    try:
        run_flower_simulation(server_app, client_app, cfg["clients_per_round"],
                              num_cpus_per_client=sim["num_cpus_per_client"],
                              num_gpus_per_client=sim["num_gpus_per_client"],
                              ray_address=sim["ray_address"], ray_timeout_s=sim["ray_timeout_s"],
                              verbose=sim["verbose"])
        wall_time = time.perf_counter() - start
        results = history.results(cfg, plan.profiles, evaluator.model_bytes(), wall_time, evaluator.describe())
        results["partition"] = {"sizes": [len(c) for c in fed.clients], "calibration": len(fed.calibration),
                                "validation": len(fed.validation)}
        if resumed:
            results["resumed_from"] = {"checkpoint": resumed["path"], "round": resumed["round"]}
        results["timing"] = history.timing()
        plots = write_outputs(results, output_dir, fed.label_histogram())
    finally:
        if logger is not None:
            logger.finish(results, plots, failed=results is None)
    reporter.final_table(results["rounds"], [setting_name(s) for s in settings], results["per_profile"],
                         wall_time, str(output_dir), results["protocol"])
    return results


__all__ = ["check_config", "run_experiment"]
