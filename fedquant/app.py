"""Composition root: config -> data, model, plan, strategy, ClientApp -> Flower simulation -> results.

Wiring only: every step lives in its own package (``experiment``, ``federation``, ``learning``,
``runtime``, ``tracking``, ``strategies``, ``clients``). With ``__main__`` this is the only module
that knows Flower's apps, Ray and W&B together.
"""

from __future__ import annotations

import functools
import shutil
import time
from collections.abc import Mapping
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from clients import ClientSetup, make_client_app
from strategies import Links, build_strategy, discover_partitions, server_options

from .data import DatasetError
from .experiment.config import ConfigError, validate
from .experiment.history import RunHistory
from .experiment.resume import load_init, load_resume
from .experiment.rounds import AfterRound
from .experiment.specs import (
    evaluation_settings,
    experiment_specs,
    round_schedule,
    server_evaluator,
    training_plan,
    untested_training_settings,
    weight_average,
)
from .experiment.workspace import build_quantized_model, federated_data, select_device
from .federation.bitwidths import setting_name
from .federation.compression import Codec
from .federation.protocol import train_record
from .federation.uplink import Uplink
from .learning.evaluation import MIXED_PRECISION_MEASURE
from .models.state import float_state
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

    return WandbLogger(cfg, output_dir, mode=log["mode"], project=log["project"],
                       group=log["group"] or group, job_type=cfg["strategy"]["name"],
                       entity=log["entity"], tags=list(log["tags"] or []))


def client_setup(cfg: Mapping, output_dir: str | Path | None = None) -> ClientSetup:
    """What every ClientApp process rebuilds the experiment from (picklable). With uplink error
    feedback each client keeps its residuals in ``<output_dir>/client_state/<client>/``: in
    simulation the devices' private storage lives beside the run (the server never reads it)."""
    data_spec, model_spec = experiment_specs(cfg)
    sim = cfg["simulation"]
    state_dir = str(Path(output_dir) / CLIENT_STATE) if output_dir is not None and cfg["uplink"]["error_feedback"] \
        else None
    return ClientSetup(data_spec, model_spec, threads=max(1, int(sim["num_cpus_per_client"])), device=sim["device"],
                       retain_freed_memory=sim["retain_freed_memory"], state_dir=state_dir)


CLIENT_STATE = "client_state"


def carry_client_state(resumed_dir: Path, output_dir: Path) -> None:
    """A run resumed into another folder takes its simulated clients' private state along (the
    residuals of :class:`fedquant.federation.uplink.ResidualStore`), as devices keep theirs."""
    source, target = resumed_dir / CLIENT_STATE, output_dir / CLIENT_STATE
    if source.is_dir() and source.resolve() != target.resolve():
        shutil.copytree(source, target, dirs_exist_ok=True)


def links(cfg: Mapping, model_spec, data) -> Links:
    """The run's uplink and downlink (``uplink.*``, ``downlink.*``); with width profiles, the
    sub-models' templates the server decodes compressed replies with."""

    @functools.lru_cache(maxsize=8)
    def template(width: float) -> dict:
        return float_state(build_quantized_model(model_spec, data, width=width))

    down = cfg["downlink"]
    return Links(Uplink.from_config(cfg["uplink"]), Codec(down["bits"], "nearest", down["granularity"]),
                 templates=template, checkpoint_every=cfg["checkpoint"]["every"])


class Experiment:
    """One experiment, built from a checked config before any Flower engine starts.

    :meth:`serve` runs its rounds on whatever Flower ``Grid`` it is given (fedquant's own
    simulation adapter, or the ServerApp of ``flwr run``); :meth:`finish` writes results.json,
    metrics.csv and the plots; :meth:`close` ends W&B logging either way. With ``resume=true``
    (the newest checkpoint under ``runs_root``, Hydra's output root) or ``resume_from=<checkpoint
    or run dir>`` it continues that run exactly where it stopped.
    """

    def __init__(self, cfg: Mapping, output_dir: str | Path, group: str | None = None,
                 runs_root: Path | None = None) -> None:
        started = self._started = time.perf_counter()
        check_config(cfg)
        strat, sim = cfg["strategy"], cfg["simulation"]
        if sim["retain_freed_memory"]:
            retain_freed_memory()
        self.cfg, self.output_dir = cfg, Path(output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.resumed = load_resume(cfg, self.output_dir, runs_root)
        data_spec, model_spec = experiment_specs(cfg)
        self.fed = _load_federated_data(data_spec)
        self.plan = training_plan(cfg)
        self.settings = evaluation_settings(cfg)
        if untested := untested_training_settings(cfg):
            print(f"note: clients train at {', '.join(map(setting_name, untested))}, which the server never tests; "
                  f"add {'it' if len(untested) == 1 else 'them'} to eval.settings to see how the model does there",
                  flush=True)
        model = build_quantized_model(model_spec, self.fed.data, seed=cfg["seed"])
        self.evaluator = server_evaluator(cfg, self.fed, self.settings, select_device(sim["device"]))
        self.history = RunHistory.from_checkpoint(self.resumed) if self.resumed else RunHistory()
        self.reporter = ConsoleReporter(cfg["num_rounds"], quiet=cfg["quiet"])
        self.strategy = build_strategy(strat["server"], self.plan, min_replies=strat["min_replies"],
                                       on_too_few=strat["on_too_few_replies"], max_retries=strat["max_retries"],
                                       client_work=[len(c) for c in self.fed.clients],
                                       on_report=self.history.record_train, on_replies=self.reporter.clients,
                                       links=links(cfg, model_spec, self.fed.data),
                                       partition_sizes=[len(c) for c in self.fed.clients], dp=strat["dp"],
                                       dp_options=strat["dp_options"], client_lr=float(cfg["client"]["lr"]),
                                       **strat["server_options"])
        self.offset, self.initial_state = 0, float_state(model)
        self.initialized = None if self.resumed else load_init(cfg, self.initial_state)
        if self.initialized:
            self.initial_state, source = self.initialized
            print(f"starting from {source['checkpoint']} (round {source['round']} of a {source['strategy']} run)")
        if self.resumed:
            carry_client_state(Path(self.resumed["path"]).parent, self.output_dir)
            self.offset, self.initial_state = self.resumed["round"], self.resumed["arrays"]
            self.strategy.resume_at(self.offset, self.resumed["server_state"])
            print(f"resuming {self.resumed['path']} after round {self.offset}")
        self.logger = _make_logger(cfg, self.output_dir, group)
        self.averaging = weight_average(cfg, self.resumed)
        self.after_round = AfterRound(self.history, self.evaluator, round_schedule(cfg), self.reporter, self.plan.profiles,
                                      self._save, self.logger, resumed_round=self.offset if self.resumed else None,
                                      averaging=self.averaging, started=started)
        self.results: dict | None = None
        self._plots = None

    def _save(self, server_round: int, state: dict) -> None:
        save_checkpoint(self.output_dir, server_round,
                        {"arrays": state, "server_state": self.strategy.server_state(),
                         **self.history.checkpoint_payload(), "average": self.averaging.state_dict(),
                         "initialized_from": self.initialized[1] if self.initialized
                         else (self.resumed or {}).get("initialized_from"),
                         "wall_time_s": self._earlier_wall_time() + time.perf_counter() - self._started,
                         "config": self.cfg},
                        keep=self.cfg["checkpoint"]["keep"])

    def serve(self, grid: Grid, data_on_nodes: bool = False) -> None:
        """Run the remaining rounds on ``grid``: Flower's strategy loop, ``AfterRound`` as its
        ``evaluate_fn``. ``data_on_nodes`` (deployment): each node holds one client partition,
        found out first (``strategies.discover_partitions``); otherwise the plan's partitions are
        dealt out over the nodes (simulation)."""
        if data_on_nodes:
            self.strategy.assign_nodes(discover_partitions(grid, self.cfg["num_clients"]))

        def evaluate_fn(flower_round: int, arrays: ArrayRecord) -> MetricRecord | None:
            evaluation = self.after_round(flower_round + self.offset, arrays.to_torch_state_dict())
            if evaluation is None:
                return None
            return MetricRecord({f"{split}/{k}/{m}": v[m] for split in ("test", "validation")
                                 for k, v in evaluation[split].items() for m in ("accuracy", "loss")})

        poll_replies_often(grid)
        self.strategy.start(grid=grid, initial_arrays=ArrayRecord(self.initial_state),
                            num_rounds=self.cfg["num_rounds"] - self.offset,
                            train_config=ConfigRecord(train_record(self.cfg["client"], self.cfg["dataset"]["augment"])), evaluate_fn=evaluate_fn)

    def _earlier_wall_time(self) -> float:
        """Seconds the run took before the checkpoint it resumed from (0 for a fresh run)."""
        return float((self.resumed or {}).get("wall_time_s") or 0.0)

    def finish(self, wall_time: float) -> dict:
        """results.json, metrics.csv, the plots and the final table; returns the results.
        ``wall_time`` is this process's; a resumed run adds the time before its checkpoint."""
        wall_time += self._earlier_wall_time()
        assignments = self.history.final_assignments()
        sizes = self.evaluator.model_bytes() | {name: a["model_bytes"] for name, a in assignments.items()}
        fed, results = self.fed, self.history.results(self.cfg, self.plan.profiles, sizes, wall_time,
                                                      self.evaluator.describe())
        results["partition"] = {"sizes": [len(c) for c in fed.clients], "calibration": len(fed.calibration),
                                "validation": len(fed.validation)}
        if self.resumed:
            results["resumed_from"] = {"checkpoint": self.resumed["path"], "round": self.resumed["round"]}
        source = self.initialized[1] if self.initialized else (self.resumed or {}).get("initialized_from")
        if source:
            results["initialized_from"] = source
        if assignments:  # those the final evaluation tested (every evaluation's: rounds[].mixed_precision)
            results["mixed_precision"] = {"measure": MIXED_PRECISION_MEASURE} | assignments
        results["timing"] = self.history.timing()
        self._plots = write_outputs(results, self.output_dir, fed.label_histogram())
        self.results = results
        self.reporter.final_table(results["rounds"], [setting_name(s) for s in self.settings],
                                  results["per_profile"], wall_time, str(self.output_dir), results["protocol"],
                                  results["per_profile_model_bytes"],
                                  {p.name: p.scheme.label for p in self.plan.profiles if p.scheme})
        return results

    def close(self) -> None:
        """End the progress display and W&B logging (as failed unless :meth:`finish` ran)."""
        self.reporter.close()
        if self.logger is not None:
            self.logger.finish(self.results, self._plots, failed=self.results is None)


def run_experiment(cfg: Mapping, output_dir: str | Path, group: str | None = None,
                   runs_root: Path | None = None) -> dict:
    """Run one federated experiment described by ``cfg`` (a plain mapping) on fedquant's Flower
    simulation adapter (Ray); write results.json, metrics.csv and plots to ``output_dir``; log to
    W&B when ``logger.name=wandb``. Resumes as :class:`Experiment` says."""
    experiment = Experiment(cfg, output_dir, group, runs_root)
    server_app = ServerApp()

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:  # noqa: ARG001 - Flower's signature
        experiment.serve(grid)

    sim = cfg["simulation"]
    start = time.perf_counter()
    try:
        run_flower_simulation(server_app, make_client_app(client_setup(cfg, output_dir)), cfg["clients_per_round"],
                              num_cpus_per_client=sim["num_cpus_per_client"],
                              num_gpus_per_client=sim["num_gpus_per_client"],
                              ray_address=sim["ray_address"], ray_timeout_s=sim["ray_timeout_s"],
                              verbose=sim["verbose"])
        return experiment.finish(time.perf_counter() - start)
    finally:
        experiment.close()


__all__ = ["Experiment", "check_config", "client_setup", "run_experiment"]
