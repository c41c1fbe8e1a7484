"""The cross-key rules of the experiment config, in the order :func:`fedquant.experiment.config.validate`
runs them (after every key has been checked against its field in the schema): each raises
:class:`ConfigError` with one line."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path

from ..federation.bitwidths import FLOAT, parse_settings
from ..federation.profiles import profiles_from_config
from ..models import WIDTH_MODELS, model_options
from . import schema
from .keys import ConfigError, check_section, get

MIN_CALIBRATION = 32  # images: one batch for BatchNorm statistics and activation ranges


def _at_most(cfg: Mapping, name: str, bound: str) -> None:
    value, hi = get(cfg, name), get(cfg, bound)
    if value > hi:
        raise ConfigError(f"{name}={value!r} is not valid: allowed is an integer in 1..{hi} (at most {bound})")


def check_counts(cfg: Mapping, servers) -> None:
    _at_most(cfg, "clients_per_round", "num_clients")
    _at_most(cfg, "strategy.min_replies", "clients_per_round")


def check_dataset_root(cfg: Mapping, servers) -> None:
    root, name = cfg["dataset"]["root"], cfg["dataset"]["name"]
    if root is None:
        return
    if not root:
        raise ConfigError(f"dataset.root={root!r} is not valid: allowed is null or a folder path")
    if name == "digits":
        raise ConfigError(f"dataset.root={root!r} is not valid for dataset.name=digits: digits is bundled "
                          "with scikit-learn; allowed is null")
    path = Path(root).expanduser()
    if not path.exists():
        raise ConfigError(f"dataset.root={root!r} does not exist: create the folder (a missing dataset is "
                          "downloaded into it) or set dataset.root=null to use the default places")
    if not path.is_dir():
        raise ConfigError(f"dataset.root={root!r} is not valid: it is a file, allowed is a folder")


def check_model_options(cfg: Mapping, servers) -> None:
    name, options = cfg["model"]["name"], cfg["model"]["options"]
    allowed = model_options(name)
    for k in options:
        if k not in allowed:
            raise ConfigError(f"model.options.{k} is not valid for model.name={name}: "
                              f"allowed are {', '.join(allowed) or 'none'}")
    if "norm" in options and options["norm"] not in ("batch", "group"):
        raise ConfigError(f"model.options.norm={options['norm']!r} is not valid: allowed are batch, group")


def check_server(cfg: Mapping, servers: Mapping[str, Collection[str]]) -> None:
    server = cfg["strategy"]["server"]
    if server not in servers:
        raise ConfigError(f"strategy.server={server!r} is not valid: allowed are {', '.join(servers)}")
    for k in cfg["strategy"]["server_options"]:
        if k not in servers[server]:
            raise ConfigError(f"strategy.server_options.{k} is not valid for strategy.server={server}: "
                              f"allowed are {', '.join(sorted(servers[server]))}")


def check_bits(cfg: Mapping, servers) -> None:
    strat = cfg["strategy"]
    if strat["sampling"] == "fixed" and len(parse_settings(strat["bits"], "strategy.bits")) != 1 \
            and strat["name"] == "qafedavg":
        raise ConfigError(f"strategy.bits={[str(b) for b in strat['bits']]} is not valid with "
                          "strategy.sampling=fixed: allowed is exactly one setting, e.g. [4]")


def check_profiles(cfg: Mapping, servers) -> None:
    profiles = cfg["strategy"]["profiles"]
    if not profiles:
        return
    bits = parse_settings(cfg["strategy"]["bits"], "strategy.bits")
    names = set()
    for i, p in enumerate(profiles):
        check_section(p, schema.ProfileConfig, f"strategy.profiles[{i}].", partial=True)
        if p["name"] in names:
            raise ConfigError(f"strategy.profiles[{i}].name={p['name']!r} is not valid: allowed is a non-empty "
                              "name not used by another profile")
        names.add(p["name"])
        own = parse_settings(p["bits"], f"strategy.profiles[{i}].bits")
        if cfg["strategy"]["name"] == "qafedavg" and not [s for s in bits if s == FLOAT or s in own]:
            raise ConfigError(f"strategy.profiles[{i}].bits={list(p['bits'])} shares no bit-width with strategy.bits: "
                              "allowed is a profile with at least one bit-width in strategy.bits")
    total = sum(float(p["share"]) for p in profiles)
    if abs(total - 1.0) > 1e-6:
        raise ConfigError(f"strategy.profiles shares sum to {total:g}: allowed is a sum of 1")
    if any(p.width < 1 for p in profiles_from_config(profiles)):
        check_widths(cfg)


def check_widths(cfg: Mapping) -> None:
    """What width profiles (HeteroFL sub-models) need: a model with a width, BatchNorm statistics
    collected by the server (HeteroFL's static BatchNorm), no weight freezing."""
    model = cfg["model"]["name"]
    if model not in WIDTH_MODELS:
        raise ConfigError(f"strategy.profiles: a width below 1 needs a model with HeteroFL sub-models, and "
                          f"model.name={model} has none: allowed are {', '.join(WIDTH_MODELS)}")
    if cfg["eval"]["reestimate_bn"] is not True:
        raise ConfigError("eval.reestimate_bn=false is not valid with width profiles: sub-models are evaluated "
                          "with BatchNorm statistics the server collects (HeteroFL's static BatchNorm); set it to true")
    if cfg["client"]["freeze_threshold"]:
        raise ConfigError("client.freeze_threshold is not supported with width profiles (the frozen masks are "
                          "per entry of the full model); set it to 0 or give every profile width 1")


def check_oscillation(cfg: Mapping, servers) -> None:
    client, bits = cfg["client"], parse_settings(cfg["strategy"]["bits"], "strategy.bits")
    dampen, threshold = client["dampen_weight"], client["freeze_threshold"]
    if (dampen or threshold) and (cfg["strategy"]["name"] != "qafedavg" or all(w is None for w, _ in bits)):
        name = "client.dampen_weight" if dampen else "client.freeze_threshold"
        raise ConfigError(f"{name}={dampen or threshold} needs quantization-aware training: use strategy=qafedavg "
                          f"with a quantized setting in strategy.bits, or set {name}=0")
    if threshold and cfg["quantization"]["learned_ranges"]:
        raise ConfigError("client.freeze_threshold is not supported with quantization.learned_ranges=true (frozen "
                          "values are placed on the max-range grid); set one of them off")


def check_resume(cfg: Mapping, servers) -> None:
    for name in ("resume_from", "init_from"):
        path = cfg[name]
        if path is not None and not Path(str(path)).expanduser().exists():
            raise ConfigError(f"{name}={path!r} is not valid: no such file or directory; "
                              "allowed is a checkpoint_r*.pt file or a run directory holding one")


def check_recipes(cfg: Mapping, servers) -> None:
    """The warm-start recipes schedule QAT: they need QAFedAvg with a quantized setting in B."""
    strat = cfg["strategy"]
    for name, off in (("qat_from_round", 1), ("progressive_rounds", 0)):
        if strat[name] != off and (strat["name"] != "qafedavg" or all(
                s == FLOAT for s in parse_settings(strat["bits"], "strategy.bits"))):
            raise ConfigError(f"strategy.{name}={strat[name]} schedules quantization-aware training: use "
                              f"strategy=qafedavg with a quantized setting in strategy.bits, or set strategy.{name}={off}")


def check_links(cfg: Mapping, servers) -> None:
    """Error feedback keeps the part of an update the uplink grid dropped: it needs a compressed
    update."""
    up = cfg["uplink"]
    if up["error_feedback"] and (up["bits"] == 32 or up["send"] != "update"):
        why = "uplink.bits=32 sends float32 (nothing is dropped)" if up["bits"] == 32 else \
            "uplink.send=weights sends no update"
        raise ConfigError(f"uplink.error_feedback=true is not valid here: {why}; compress the update "
                          "(uplink.bits=2..16 uplink.send=update) or set uplink.error_feedback=false")


def check_holdout(cfg: Mapping, servers=None) -> None:
    """The server hold-out must leave ``MIN_CALIBRATION`` calibration images after the
    validation ones whenever a quantized setting is tested (or BatchNorm is re-estimated)."""
    holdout, validation = cfg["dataset"]["holdout"], cfg["dataset"]["validation"]
    if validation > holdout:
        raise ConfigError(f"dataset.validation={validation} is not valid: allowed is at most dataset.holdout={holdout} "
                          "(validation images are taken from the server hold-out)")
    quantized = any(s != FLOAT for s in parse_settings(cfg["eval"]["settings"], "eval.settings")) \
        or bool(cfg["strategy"]["profiles"])
    if (quantized or cfg["eval"]["reestimate_bn"]) and holdout - validation < MIN_CALIBRATION:
        raise ConfigError(f"dataset.holdout={holdout} is too small: it leaves {holdout - validation} calibration images "
                          f"after dataset.validation={validation}; allowed is dataset.holdout >= dataset.validation + "
                          f"{MIN_CALIBRATION} when quantized settings are tested or BatchNorm is re-estimated")


RULES = (check_counts, check_dataset_root, check_model_options, check_server, check_bits, check_profiles,
         check_oscillation, check_recipes, check_links, check_resume, check_holdout)
MACHINE_RULES = (check_dataset_root, check_resume)  # about the machine a run starts on, not the run
