"""From a checked config to the small objects a run is built from: data and model specs (which
every process rebuilds from), the training plan, the evaluation settings and the evaluator."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import torch
from torch import nn

from ..federation.bitwidths import FLOAT, Setting, parse_settings
from ..federation.freezing import OscillationPlan
from ..federation.plan import TrainingPlan
from ..federation.profiles import profiles_from_config, width_levels, with_profile_settings
from ..federation.schedule import BitSchedule, LRSchedule
from ..learning.evaluation import EvalProtocol, Evaluator
from ..learning.width_evaluation import LevelledEvaluator
from ..models.width import without_scalers
from .averaging import WeightAverage
from .rounds import Schedule
from .workspace import DataSpec, FederatedData, ModelSpec, build_quantized_model


def _partition_params(part: Mapping) -> tuple:
    return tuple(sorted((k, v) for k, v in part.items() if k != "name"))


def experiment_specs(cfg: Mapping) -> tuple[DataSpec, ModelSpec]:
    """The picklable data and model specs that the server and every worker rebuild from."""
    data = DataSpec(cfg["dataset"]["name"], cfg["dataset"]["root"], cfg["partition"]["name"],
                    _partition_params(cfg["partition"]), cfg["num_clients"], cfg["dataset"]["holdout"],
                    cfg["dataset"]["validation"], cfg["seed"])
    model = ModelSpec(cfg["model"]["name"], tuple(sorted(cfg["model"]["options"].items())),
                      tuple(sorted(cfg["quantization"].items())))
    return data, model


def training_plan(cfg: Mapping) -> TrainingPlan:
    """Client sampling, device profiles, bit-width assignment and fault injection from ``cfg``."""
    strat, faults, client = cfg["strategy"], cfg["faults"], cfg["client"]
    schedule = None
    if client["lr_schedule"] != "constant":
        schedule = LRSchedule(client["lr_schedule"], float(client["lr"]), cfg["num_rounds"],
                              float(client["lr_min_factor"]), int(client["lr_step_rounds"]),
                              float(client["lr_gamma"]))
    bits = parse_settings(strat["bits"], "strategy.bits")
    recipe = BitSchedule(strat["qat_from_round"], strat["progressive_rounds"])
    return TrainingPlan(strat["name"], strat["sampling"], bits, cfg["num_clients"], cfg["clients_per_round"], cfg["seed"],
                        profiles_from_config(strat["profiles"]),
                        failure_rate=faults["client_failure_rate"], nan_rate=faults["nan_client_rate"],
                        lr_schedule=schedule, oscillation=oscillation_plan(cfg, bits),
                        bit_schedule=recipe if recipe.active else None)


def oscillation_plan(cfg: Mapping, bits: list[Setting]) -> OscillationPlan | None:
    """Oscillation dampening / weight freezing (``client.dampen_weight``, ``client.freeze_*``),
    counted on the grid of the lowest weight bit-width in ``bits`` that a client trains (a device
    profile's); None when both are off."""
    client, quant = cfg["client"], cfg["quantization"]
    dampen, threshold = float(client["dampen_weight"]), float(client["freeze_threshold"])
    if not (dampen or threshold):
        return None
    profiles = profiles_from_config(cfg["strategy"]["profiles"])
    trained = [s for s in bits if not profiles or any(s in p.settings for p in profiles)] or bits
    ref_bits = min(w for w, _ in trained if w is not None)
    return OscillationPlan(dampen, threshold, float(client["freeze_momentum"]), ref_bits, cfg["num_rounds"],
                           bool(quant["narrow_range"]), quant["weight_granularity"] == "per_channel")


def evaluation_settings(cfg: Mapping, names=None, key: str = "eval.settings") -> list[Setting]:
    """The settings the server tests the full model at: ``names`` (default ``eval.settings``) plus
    the deployment settings of every device profile that holds the full model (those of narrower
    profiles are tested on their sub-models, see :func:`server_evaluator`)."""
    settings = parse_settings(cfg["eval"]["settings"] if names is None else names, key)
    return with_profile_settings(settings, [p for p in profiles_from_config(cfg["strategy"]["profiles"]) if p.width == 1])


def untested_training_settings(cfg: Mapping) -> list[Setting]:
    """The quantized settings QAFedAvg clients train at that the server never tests (neither in
    ``eval.settings`` nor a device profile's): worth a warning, since nobody sees how they do."""
    if cfg["strategy"]["name"] != "qafedavg":
        return []
    tested = evaluation_settings(cfg)
    return [s for s in parse_settings(cfg["strategy"]["bits"], "strategy.bits") if s != FLOAT and s not in tested]


def eval_protocol(cfg: Mapping) -> EvalProtocol:
    """The protocol keys of the checked ``eval`` section (the fields :class:`EvalProtocol` and the
    schema's ``eval`` section share, taken by name)."""
    return EvalProtocol(**{f.name: cfg["eval"][f.name] for f in dataclasses.fields(EvalProtocol)})


def server_evaluator(cfg: Mapping, fed: FederatedData, settings: list[Setting] | None = None,
                     device: torch.device | str = "cpu") -> Evaluator | LevelledEvaluator:
    """The server's evaluator for a checked ``cfg``: its model built from the config's model spec,
    the ``eval`` protocol, the hold-out of ``fed``, at ``settings`` (default
    :func:`evaluation_settings`). With width profiles it also tests each width level's sub-model
    (at fp and its profiles' settings, see :mod:`fedquant.learning.width_evaluation`). The run, its
    re-evaluation and its export all build their evaluator here."""
    _, spec = experiment_specs(cfg)
    protocol = eval_protocol(cfg)
    settings = evaluation_settings(cfg) if settings is None else settings

    def evaluator(m: nn.Module, at: list[Setting]) -> Evaluator:
        return Evaluator(m, fed.data, fed.calibration, fed.validation, at, protocol, cfg["eval"]["batch_size"], device)

    full = evaluator(build_quantized_model(spec, fed.data, cfg["seed"]), settings)
    levels = width_levels(profiles_from_config(cfg["strategy"]["profiles"]))
    if not levels:
        return full
    return LevelledEvaluator(full, {
        width: evaluator(without_scalers(build_quantized_model(spec, fed.data, cfg["seed"], width)),
                         [FLOAT] + [s for s in at if s != FLOAT])
        for width, at in sorted(levels.items(), reverse=True)})


def round_schedule(cfg: Mapping) -> Schedule:
    """When the server evaluates and checkpoints (``eval.every``, ``eval.initial``, ``checkpoint.every``)."""
    return Schedule(cfg["num_rounds"], cfg["eval"]["every"], cfg["eval"]["initial"],
                    cfg["checkpoint"]["every"])


def weight_average(cfg: Mapping, checkpoint: Mapping | None = None) -> WeightAverage:
    """The averaging of the global models that the server evaluates (``eval.average``), restored
    from ``checkpoint`` when the run resumes."""
    ev = cfg["eval"]
    average = WeightAverage(ev["average"], float(ev["ema_decay"]), int(ev["average_from"]))
    if checkpoint and checkpoint.get("average"):
        average.load_state_dict(checkpoint["average"])
    return average
