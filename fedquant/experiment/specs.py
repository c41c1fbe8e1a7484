"""From a checked config to the small objects a run is built from: data and model specs (which
every process rebuilds from), the training plan, the evaluation settings and the evaluator."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import torch
from torch import nn

from ..federation.attacks import AttackPlan
from ..federation.bitwidths import FLOAT, Setting, parse_settings, setting_name
from ..federation.freezing import OscillationPlan
from ..federation.plan import TrainingPlan
from ..federation.profiles import (
    Level,
    Profile,
    deployment_levels,
    profiles_from_config,
    with_profile_settings,
)
from ..federation.schedule import BitSchedule, LRSchedule
from ..learning.evaluation import Budget, EvalProtocol, Evaluator
from ..learning.width_evaluation import LevelledEvaluator
from ..models.width import without_scalers
from ..quant import quant_layers
from ..quant.scheme import Scheme, set_scheme
from .averaging import WeightAverage
from .keys import ConfigError
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


def run_profiles(cfg: Mapping) -> list[Profile]:
    """The run's device profiles (``strategy.profiles``), each with its scheme resolved against the
    ``quantization`` section."""
    return profiles_from_config(cfg["strategy"]["profiles"], cfg["quantization"])


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
                        run_profiles(cfg),
                        failure_rate=faults["client_failure_rate"], nan_rate=faults["nan_client_rate"],
                        attacks=attack_plan(faults),
                        lr_schedule=schedule, oscillation=oscillation_plan(cfg, bits),
                        bit_schedule=recipe if recipe.active else None, scheme=Scheme.of(cfg["quantization"]))


def attack_plan(faults: Mapping) -> AttackPlan | None:
    """The hostile clients of ``faults.attack*`` (None: every client honest)."""
    if faults["attack"] == "none":
        return None
    return AttackPlan(faults["attack"], float(faults["attack_rate"]), float(faults["attack_scale"]),
                      float(faults["attack_std"]))


def oscillation_plan(cfg: Mapping, bits: list[Setting]) -> OscillationPlan | None:
    """Oscillation dampening / weight freezing (``client.dampen_weight``, ``client.freeze_*``),
    counted on the grid of the lowest weight bit-width in ``bits`` that a client trains (a device
    profile's); None when both are off."""
    client, quant = cfg["client"], cfg["quantization"]
    dampen, threshold = float(client["dampen_weight"]), float(client["freeze_threshold"])
    if not (dampen or threshold):
        return None
    profiles = run_profiles(cfg)
    trained = [s for s in bits if not profiles or any(s in p.settings for p in profiles)] or bits
    ref_bits = min(w for w, _ in trained if w is not None)
    return OscillationPlan(dampen, threshold, float(client["freeze_momentum"]), ref_bits, cfg["num_rounds"],
                           bool(quant["narrow_range"]), quant["weight_granularity"] == "per_channel",
                           Scheme.of(quant).pow2)


def evaluation_settings(cfg: Mapping, names=None, key: str = "eval.settings") -> list[Setting]:
    """The settings the server tests the full model at (at the run's scheme): ``names`` (default
    ``eval.settings``) plus the deployment settings of every device profile that holds the full
    model under the run's scheme (those of narrower profiles or of profiles with a scheme of their
    own are tested on their levels, see :func:`server_evaluator`)."""
    settings = parse_settings(cfg["eval"]["settings"] if names is None else names, key)
    return with_profile_settings(settings, [p for p in run_profiles(cfg) if p.level == Level()])


def untested_training_settings(cfg: Mapping) -> list[Setting]:
    """The quantized settings QAFedAvg clients train at that the server never tests (neither in
    ``eval.settings`` nor a device profile's): worth a warning, since nobody sees how they do."""
    if cfg["strategy"]["name"] != "qafedavg":
        return []
    tested = evaluation_settings(cfg) + [s for p in run_profiles(cfg) for s in p.settings]  # on every level
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
    (at fp and its profiles' settings), and with profiles of their own scheme the model under that
    scheme (at its profiles' settings; see :mod:`fedquant.learning.width_evaluation`). The run, its
    re-evaluation and its export all build their evaluator here."""
    _, spec = experiment_specs(cfg)
    protocol = eval_protocol(cfg)
    settings = evaluation_settings(cfg) if settings is None else settings

    def evaluator(m: nn.Module, at: list[Setting]) -> Evaluator:
        return Evaluator(m, fed.data, fed.calibration, fed.validation, at, protocol, cfg["eval"]["batch_size"], device)

    def level_model(level: Level) -> nn.Module:
        model = build_quantized_model(spec, fed.data, cfg["seed"], level.width)
        model = without_scalers(model) if level.width < 1 else model
        return set_scheme(model, level.scheme) if level.scheme else model

    profiles = run_profiles(cfg)
    full = evaluator(build_quantized_model(spec, fed.data, cfg["seed"]), settings)
    with_budgets(full, [p for p in profiles if p.level == Level()])
    levels = deployment_levels(profiles)
    if not levels:
        return full

    def level_settings(level: Level) -> list[Setting]:  # a sub-model is also tested in float
        at = levels[level]
        return at if level.width == 1 else [FLOAT] + [s for s in at if s != FLOAT]

    order = sorted(levels, key=lambda lv: (-lv.width, lv.scheme is not None, lv.scheme.label if lv.scheme else ""))
    return LevelledEvaluator(full, {level: with_budgets(evaluator(level_model(level), level_settings(level)),
                                                        [p for p in profiles if p.level == level]) for level in order})


def with_budgets(evaluator: Evaluator, profiles: list[Profile]) -> Evaluator:
    """``evaluator`` testing the mixed-precision budget of each of ``profiles`` that has one
    (all on the evaluator's level); ``ConfigError`` when the model cannot meet one: fewer than two
    layers to choose for, or a budget below its smallest assignment (both stated in bytes)."""
    for p in profiles:
        if p.budget is None:
            continue
        budget = Budget(p.budget, p.layer_options)
        layers = list(quant_layers(evaluator.model))
        free = [layer for layer in layers if not layer.pinned]
        if len(free) < 2:
            raise ConfigError(f"strategy.profiles: {p.name}'s budget needs a model with at least two layers to give "
                              f"different bits, and only {len(free)} of its {len(layers)} quantized layers "
                              f"{'is' if len(free) == 1 else 'are'} not pinned; "
                              "remove the budget or set quantization.pin_first_last=false")
        limit, least = budget.bytes_for(evaluator.model), budget.smallest_bytes(evaluator.model)
        if limit < least:
            raise ConfigError(f"strategy.profiles: {p.name}'s budget={p.budget} ({limit:,} bytes) is below the "
                              f"smallest model its layer bits {[setting_name(o) for o in budget.options]} give, "
                              f"{least:,} bytes; raise the budget or allow fewer bits")
        evaluator.budgets[p.mixed] = budget
    return evaluator


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
