"""Check a whole experiment config before anything starts (no Ray, no data loading).

Every key is checked against its field in :mod:`fedquant.experiment.schema` (type, allowed values,
bounds), then the cross-key rules below run in order. Every problem is reported as one
:class:`ConfigError` line: the key, the bad value, what is allowed.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import typing
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..federation.bitwidths import FLOAT, parse_settings
from ..federation.profiles import profiles_from_config
from ..fields import REQUIRED, check_key
from ..models import WIDTH_MODELS, model_options
from ..quant import QuantConfig
from . import schema

MIN_CALIBRATION = 32  # images: one batch for BatchNorm statistics and activation ranges


class ConfigError(ValueError):
    """A bad config value; ``str()`` is the one line shown to the user."""


def _get(cfg: Mapping, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


def _unknown(name: str, section: Mapping, known: Collection[str], prefix: str) -> ConfigError:
    close = difflib.get_close_matches(name, list(known), n=1)
    hint = f"did you mean {prefix}{close[0]}? " if close else ""
    return ConfigError(f"{prefix}{name} is not a config key: {hint}allowed under "
                       f"{prefix.rstrip('.') or 'the top level'} are {', '.join(sorted(known))}")


def check_section(section: Any, cls: type, prefix: str = "", elsewhere: Collection[str] = (),
                  excluded: Collection[str] = (), partial: bool = False) -> None:
    """Every field of the dataclass ``cls`` present in ``section`` with a valid value (nested
    sections recursively; with ``partial``, keys with a default may be left out), and no key
    ``cls`` does not know. ``elsewhere``: keys of ``cls`` checked by another function; ``excluded``:
    fields of ``cls`` that are not config keys (a run-time value)."""
    if not isinstance(section, Mapping):
        raise ConfigError(f"{prefix.rstrip('.')}={section!r} is not valid: allowed is a mapping")
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.name not in elsewhere and f.name not in excluded]
    for f in fields:
        name = prefix + f.name
        if partial and f.name not in section and f.default != REQUIRED:
            continue
        if f.name not in section or section[f.name] == REQUIRED:
            raise ConfigError(_missing(name, f))
        if dataclasses.is_dataclass(f.default_factory):
            check_section(section[f.name], f.default_factory, name + ".")
            continue
        try:
            check_key(name, section[f.name], f, hints[f.name])
        except ValueError as err:
            raise ConfigError(str(err)) from None
    known = {f.name for f in fields} | set(elsewhere)
    for k in section:
        if k not in known:
            raise _unknown(k, section, known, prefix)


def _missing(name: str, f: dataclasses.Field) -> str:
    if f.default == REQUIRED:
        group = name.split(".")[0]
        return (f"{name} is missing: it is set by the {group} config group (conf/{group}/), e.g. {group}=<option>"
                if "[" not in name else f"{name} is missing: it has no default, give it")
    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    return f"{name} is missing: add it, e.g. {name}={default!r} (its default)"


def _check_variant(cfg: Mapping, section: str) -> None:
    """A section whose keys depend on its ``name`` (the config group's option)."""
    name_key, names, variants = schema.VARIANTS[section]
    node = cfg[section]
    if not isinstance(node, Mapping) or node.get(name_key, REQUIRED) == REQUIRED:
        raise ConfigError(f"{section}.{name_key} is missing: choose one with {section}=<option> (see conf/{section}/)")
    if node[name_key] not in names:
        raise ConfigError(f"{section}.{name_key}={node[name_key]!r} is not valid: allowed are {', '.join(names)}")
    check_section(node, variants[node[name_key]], section + ".", elsewhere=(name_key,))


def check_keys(cfg: Mapping) -> None:
    """Every key of the schema present and valid, no unknown key."""
    check_section(cfg, schema.ExperimentConfig, elsewhere=("partition", "quantization", "logger"))
    for section in schema.VARIANTS:
        if section not in cfg:
            raise ConfigError(f"{section} is missing: choose one with {section}=<option> (see conf/{section}/)")
        _check_variant(cfg, section)
    check_section(cfg.get("quantization", REQUIRED), QuantConfig, "quantization.", excluded=schema.RUN_TIME_BITS)


# ---- cross-key rules, in the order they are checked -------------------------------------------

def _at_most(cfg: Mapping, name: str, bound: str) -> None:
    value, hi = _get(cfg, name), _get(cfg, bound)
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
         check_oscillation, check_recipes, check_resume, check_holdout)
MACHINE_RULES = (check_dataset_root, check_resume)  # about the machine a run starts on, not the run


def validate(cfg: Mapping, servers: Mapping[str, Collection[str]], rules: Sequence = RULES) -> None:
    """Raise :class:`ConfigError` for the first problem found in ``cfg``: first every key
    (:func:`check_keys`), then the cross-key ``rules`` (:data:`RULES`).

    ``servers`` maps each Flower server strategy name to the ``strategy.server_options`` it
    accepts (``strategies.server_options()``; passed in so this module stays free of Flower).
    """
    check_keys(cfg)
    for rule in rules:
        rule(cfg, servers)


def with_overrides(cfg: Mapping, overrides: Mapping[str, Any],
                   servers: Mapping[str, Collection[str]] | None = None) -> dict:
    """A copy of ``cfg`` with dotted keys replaced (``{"eval.ptq": "adaround"}``), checked as a
    whole by :func:`validate`. Keys that a config written by an older version lacks take the
    schema's defaults (:func:`complete`: today's protocol). Without ``servers`` (offline tools,
    no Flower) the run's own server strategy and options are taken as checked when it ran."""
    out = complete(cfg)
    if servers is None:
        strat = out.get("strategy", {})
        servers = {strat.get("server"): set(strat.get("server_options", {}))}
    for dotted, value in overrides.items():
        *parents, last = dotted.split(".")
        node = out
        for part in parents:
            node = node.get(part) if isinstance(node, Mapping) else None
        if not isinstance(node, Mapping) or last not in node:
            raise ConfigError(f"{dotted} is not a config key")
        node[last] = value
    validate(out, servers, [r for r in RULES if r not in MACHINE_RULES])  # paths of the machine it ran on
    return out


# keys added after runs were written whose default is not what those runs did: {key: old behaviour}
LEGACY = {"eval.integer_bias": False}  # runs before it were evaluated with float biases


def complete(cfg: Mapping, legacy: bool = False) -> dict:
    """A copy of a run's config with the keys it lacks (written by an older version) set to the
    schema's defaults, i.e. today's protocol; with ``legacy``, keys in :data:`LEGACY` take what
    that version did instead (to continue a run exactly). Nothing else is checked."""
    out = copy.deepcopy(dict(cfg))
    if legacy:
        for dotted, value in LEGACY.items():
            *parents, last = dotted.split(".")
            node = out
            for part in parents:
                node = node.get(part) if isinstance(node, dict) else None
            if isinstance(node, dict) and last not in node:
                node[last] = value
    return _fill(out, schema.defaults())


def _fill(cfg: dict, defaults: Mapping) -> dict:
    for k, v in defaults.items():
        if k not in cfg and v != REQUIRED:
            cfg[k] = copy.deepcopy(v)
        elif isinstance(v, Mapping) and isinstance(cfg.get(k), dict):
            _fill(cfg[k], v)
    return cfg
