"""Composition root: config -> data, model, plan, strategy, ClientApp -> Flower simulation -> results.

The only module (with ``__main__``) that knows Hydra's config objects and Flower's apps together.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from clients import ClientSetup, make_client_app
from strategies import Profile, RoundReport, TrainingPlan, build_strategy

from .allocator import retain_freed_memory
from .bitwidths import Setting, parse_settings, setting_name
from .checkpoint import CheckpointError, find_checkpoint, load_checkpoint, save_checkpoint
from .evaluation import Evaluator
from .protocol import train_record, transport_state
from .simulation import poll_replies_often, run_flower_simulation
from .tracking import ConsoleReporter
from .tracking.plots import plot_accuracy_vs_bits, plot_accuracy_vs_round, plot_partition
from .tracking.results import write_json, write_metrics_csv
from .validation import validate
from .workspace import DataSpec, ModelSpec, build_quantized_model, federated_data, select_device


def _partition_params(part: Mapping) -> tuple:
    return tuple(sorted((k, v) for k, v in part.items() if k != "name"))


def experiment_specs(cfg: Mapping) -> tuple[DataSpec, ModelSpec]:
    """The picklable data and model specs that the server and every worker rebuild from."""
    data = DataSpec(cfg["dataset"]["name"], cfg["dataset"]["root"], cfg["partition"]["name"],
                    _partition_params(cfg["partition"]), cfg["num_clients"], cfg["dataset"]["holdout"], cfg["seed"])
    model = ModelSpec(cfg["model"]["name"], tuple(sorted(cfg["model"]["options"].items())),
                      tuple(sorted(cfg["quantization"].items())))
    return data, model


def training_plan(cfg: Mapping) -> TrainingPlan:
    """Client sampling, device profiles, bit-width assignment and fault injection from ``cfg``."""
    strat, faults = cfg["strategy"], cfg["faults"]
    profiles = [Profile(p["name"], float(p["share"]), tuple(p["bits"])) for p in strat["profiles"]]
    return TrainingPlan(strat["name"], strat["sampling"], parse_settings(strat["bits"], "strategy.bits"),
                        cfg["num_clients"], cfg["clients_per_round"], cfg["seed"], profiles,
                        failure_rate=faults["client_failure_rate"], nan_rate=faults["nan_client_rate"])


def _train_config(client: Mapping) -> ConfigRecord:
    return ConfigRecord(train_record(client))


def evaluation_settings(names, profiles: list[Profile], key: str = "eval.settings") -> list[Setting]:
    """The settings the server tests: ``names`` plus every device profile's deployment settings."""
    settings = parse_settings(names, key)
    return settings + [s for p in profiles for s in p.settings if s not in settings]


def _per_profile(profiles: list[Profile], accuracy: dict[str, float]) -> dict[str, dict[str, float]]:
    """Accuracy at each profile's deployment settings."""
    return {p.name: {setting_name(s): accuracy[setting_name(s)] for s in p.settings} for p in profiles}


def _make_logger(cfg: Mapping, output_dir: Path, group: str | None):
    log = cfg["logger"]
    if log["name"] != "wandb":
        return None
    from .tracking.wandb_logger import WandbLogger

    return WandbLogger(cfg, output_dir, mode=log.get("mode"), project=log.get("project", "fedquant"),
                       group=log.get("group") or group, job_type=cfg["strategy"]["name"],
                       entity=log.get("entity"), tags=list(log.get("tags") or []))


def write_outputs(results: dict, output_dir: Path, label_histogram) -> dict[str, Path]:
    """results.json, metrics.csv and the PNG plots; returns the plots by name."""
    write_json(output_dir / "results.json", results)
    write_metrics_csv(output_dir / "metrics.csv", results)
    c = results["config"]
    name = f"{c['strategy']['name']} ({c['strategy']['sampling']}) on {c['dataset']['name']}"
    return {
        "accuracy_vs_bits": plot_accuracy_vs_bits(results["final"], output_dir / "accuracy_vs_bits.png",
                                                  f"Final accuracy: {name}"),
        "accuracy_vs_round": plot_accuracy_vs_round(results["rounds"], output_dir / "accuracy_vs_round.png",
                                                    f"Accuracy per round: {name}"),
        "partition": plot_partition(label_histogram, output_dir / "partition.png",
                                    f"{c['partition']['name']} partition of {c['dataset']['name']} "
                                    f"({c['num_clients']} clients)"),
    }


# keys that may change between a checkpointed run and its resumption
RESUMABLE_CHANGES = ("resume", "resume_from", "quiet", "logger", "simulation", "checkpoint", "num_rounds", "faults")


def _load_resume(cfg: Mapping, output_dir: Path, runs_root: Path | None) -> dict | None:
    if not (cfg.get("resume") or cfg.get("resume_from")):
        return None
    path = find_checkpoint(cfg.get("resume_from"), runs_root or output_dir.parent.parent, exclude=output_dir)
    ckpt = load_checkpoint(path)
    old = ckpt["config"]
    for key in sorted(set(old) | set(cfg)):
        if key not in RESUMABLE_CHANGES and old.get(key) != cfg.get(key):
            raise CheckpointError(f"{path} was written by a run with a different config: {key} was "
                                  f"{old.get(key)!r}, now {cfg.get(key)!r}; resume with the same settings")
    if ckpt["round"] > cfg["num_rounds"]:
        raise CheckpointError(f"{path} is at round {ckpt['round']}, beyond num_rounds={cfg['num_rounds']}")
    ckpt["path"] = str(path)
    return ckpt


def run_experiment(cfg: Mapping, output_dir: str | Path, group: str | None = None,
                   runs_root: Path | None = None) -> dict:
    """Run one federated experiment described by ``cfg`` (a plain mapping); write results.json,
    metrics.csv and plots to ``output_dir``; log to W&B when ``logger.name=wandb``.

    With ``resume=true`` (the newest checkpoint under ``runs_root``, Hydra's output root) or
    ``resume_from=<checkpoint or run dir>`` it continues that run exactly where it stopped.
    """
    started = time.perf_counter()
    validate(cfg)
    if cfg["simulation"]["retain_freed_memory"]:
        retain_freed_memory()
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    resumed = _load_resume(cfg, output_dir, runs_root)
    strat, ev, sim = cfg["strategy"], cfg["eval"], cfg["simulation"]
    data_spec, model_spec = experiment_specs(cfg)
    fed = federated_data(data_spec)  # DatasetError here: before Ray starts
    plan = training_plan(cfg)
    profiles = plan.profiles
    settings = evaluation_settings(ev["settings"], profiles)
    model = build_quantized_model(model_spec, fed.data, seed=cfg["seed"])
    evaluator = Evaluator(copy.deepcopy(model), fed.data, fed.holdout, settings, ev["estimator"],
                          ev["reestimate_bn"], ev["batch_size"], select_device(sim["device"]))
    strategy = build_strategy(strat["server"], plan, min_replies=strat["min_replies"],
                              on_too_few=strat["on_too_few_replies"], max_retries=strat["max_retries"],
                              client_work=[len(c) for c in fed.clients], **strat["server_options"])
    num_rounds = cfg["num_rounds"]
    reporter = ConsoleReporter(num_rounds, quiet=cfg.get("quiet", False))
    evals: dict[int, dict] = {}
    timing = {"round_s": {}, "eval_s": {}, "last": None}
    initial_state = transport_state(model)
    if resumed:
        strategy.round_offset = resumed["round"]
        strategy.load_server_state(resumed["server_state"])
        strategy.reports.update({int(r): RoundReport.from_dict(d) for r, d in resumed["reports"].items()})
        evals.update({int(r): e for r, e in resumed["evals"].items()})
        initial_state = resumed["arrays"]
        print(f"resuming {resumed['path']} after round {resumed['round']}")
    ckpt = cfg["checkpoint"]
    logger = _make_logger(cfg, output_dir, group)

    def save(server_round: int, arrays: ArrayRecord) -> None:
        save_checkpoint(output_dir, server_round, {
            "arrays": arrays.to_torch_state_dict(), "server_state": strategy.server_state(),
            "reports": {str(r): rep.to_dict() for r, rep in strategy.reports.items()},
            "evals": {str(r): e for r, e in evals.items()}, "config": cfg}, keep=ckpt["keep"])

    def evaluate_fn(flower_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        now = time.perf_counter()
        server_round = flower_round + strategy.round_offset
        if flower_round == 0 and resumed:  # the restored model was evaluated before the stop
            timing["last"] = time.perf_counter()
            return None
        if flower_round >= 1:  # training time of this round: since the previous evaluate_fn returned
            timing["round_s"][server_round] = now - timing["last"]
            if server_round == 1:
                timing["to_round1_end_s"] = now - started
        report = strategy.reports.get(server_round)
        loss = _mean_loss(report.clients) if report else None
        accuracies = None
        due = server_round % ev["every"] == 0 if server_round else ev.get("initial", True)
        if due or server_round == num_rounds:
            evals[server_round] = evaluator(arrays.to_torch_state_dict())
            accuracies = {k: v["accuracy"] for k, v in evals[server_round].items()}
            timing["eval_s"][server_round] = time.perf_counter() - now
        reporter.round_done(server_round, loss, len(report.failures) if report else 0, accuracies)
        if server_round and ckpt["every"] and (server_round % ckpt["every"] == 0 or server_round == num_rounds):
            save(server_round, arrays)
        timing["last"] = time.perf_counter()
        if logger is not None:
            train = {"loss": loss, "failures": len(report.failures),
                     "bits_used": _sum_bits(report.clients)} if report else None
            per_profile = _per_profile(profiles, accuracies) if accuracies else None
            logger.log_round(server_round, evals.get(server_round), train, per_profile)
        if accuracies is None:
            return None
        return MetricRecord({f"{k}/{m}": v[m] for k, v in evals[server_round].items() for m in ("accuracy", "loss")})

    server_app = ServerApp()

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:  # noqa: ARG001 - Flower's signature
        poll_replies_often(grid)
        strategy.start(grid=grid, initial_arrays=ArrayRecord(initial_state),
                       num_rounds=num_rounds - strategy.round_offset,
                       train_config=_train_config(cfg["client"]), evaluate_fn=evaluate_fn)

    client_app = make_client_app(ClientSetup(data_spec, model_spec, threads=max(1, int(sim["num_cpus_per_client"])),
                                             device=sim["device"], retain_freed_memory=sim["retain_freed_memory"]))
    start = time.perf_counter()
    results = plots = None
    try:
        run_flower_simulation(server_app, client_app, cfg["clients_per_round"],
                              num_cpus_per_client=sim["num_cpus_per_client"],
                              num_gpus_per_client=sim["num_gpus_per_client"],
                              ray_address=sim["ray_address"], verbose=sim["verbose"])
        wall_time = time.perf_counter() - start
        results = assemble_results(cfg, strategy.reports, evals, profiles, evaluator.model_bytes(), wall_time)
        results["partition"] = {"sizes": [len(c) for c in fed.clients], "holdout": len(fed.holdout)}
        if resumed:
            results["resumed_from"] = {"checkpoint": resumed["path"], "round": resumed["round"]}
        results["timing"] = {"to_round1_end_s": timing.get("to_round1_end_s"),
                             "round_s": list(timing["round_s"].values()),
                             "eval_s": {str(r): t for r, t in timing["eval_s"].items()}}
        plots = write_outputs(results, output_dir, fed.label_histogram())
    finally:
        if logger is not None:
            logger.finish(results, plots, failed=results is None)
    names = [setting_name(s) for s in settings]
    reporter.final_table(results["rounds"], names, results["per_profile"], wall_time, str(output_dir))
    return results


def _mean_loss(clients) -> float | None:
    """Example-weighted mean of the clients' train losses (None without replies)."""
    n = sum(c.num_examples for c in clients)
    return sum(c.loss * c.num_examples for c in clients) / n if n else None


def _sum_bits(clients) -> dict[str, int]:
    bits: dict[str, int] = {}
    for c in clients:
        for k, v in c.bits_used.items():
            bits[k] = bits.get(k, 0) + v
    return dict(sorted(bits.items()))


def assemble_results(cfg: Mapping, reports: dict, evals: dict[int, dict], profiles: list[Profile],
                     model_bytes: dict[str, int], wall_time: float) -> dict:
    rounds = []
    for r in range(cfg["num_rounds"] + 1):
        entry: dict = {"round": r}
        if r in evals:
            entry["eval"] = evals[r]
        if r in reports:
            rep = reports[r]
            entry["train"] = {
                "loss": _mean_loss(rep.clients),
                "bits_used": _sum_bits(rep.clients),
                "failures": len(rep.failures),
                "failure_reasons": rep.failures,
                "retries": rep.retries,
                "clients": [vars(c) for c in rep.clients],
            }
        rounds.append(entry)
    last = evals[max(evals)]
    final = {k: v["accuracy"] for k, v in last.items()}
    per_profile = _per_profile(profiles, final)
    return {"config": cfg, "rounds": rounds, "final": final, "per_profile": per_profile,
            "model_bytes": model_bytes, "wall_time_s": wall_time}


__all__ = ["assemble_results", "evaluation_settings", "experiment_specs", "run_experiment", "training_plan", "write_outputs"]
