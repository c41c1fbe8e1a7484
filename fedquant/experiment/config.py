"""Check a whole experiment config before anything starts (no Ray, no data loading).

Every problem is reported as one :class:`ConfigError` line: the key, the bad value, what is allowed.
"""

from __future__ import annotations

import numbers
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

from ..data import DATASETS, SCHEMES
from ..federation.bitwidths import FLOAT, SAMPLING_MODES, parse_setting, parse_settings
from ..federation.plan import ON_TOO_FEW, STRATEGIES
from ..federation.schedule import LR_SCHEDULES
from ..learning.evaluation import PTQ_METHODS
from ..learning.local_training import REGULARIZERS
from ..models import MODELS, WIDTH_MODELS, model_options
from ..quant import QuantConfig
from ..quant.config import ACT_RANGES, WEIGHT_RANGES
from .averaging import AVERAGES

LOGGERS = ("none", "wandb")
WANDB_MODES = ("online", "offline", "disabled")
DEVICES = ("auto", "cpu", "cuda")
_MISSING = object()


class ConfigError(ValueError):
    """A bad config value; ``str()`` is the one line shown to the user."""


def _get(cfg: Mapping, key: str):
    node = cfg
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _need(cfg: Mapping, key: str):
    value = _get(cfg, key)
    if value is _MISSING:
        raise ConfigError(f"{key} is missing: add it to the config (see conf/config.yaml)")
    return value


def _int(cfg: Mapping, key: str, lo: int, hi: int | None = None) -> int:
    value = _need(cfg, key)
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if not ok or value < lo or (hi is not None and value > hi):
        allowed = f"an integer >= {lo}" if hi is None else f"an integer in {lo}..{hi}"
        raise ConfigError(f"{key}={value!r} is not valid: allowed is {allowed}")
    return int(value)


def _float(cfg: Mapping, key: str, lo: float, hi: float | None = None, lo_open: bool = False,
           hi_open: bool = False) -> float:
    value = _need(cfg, key)
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if ok:
        ok = (value > lo if lo_open else value >= lo) and (hi is None or (value < hi if hi_open else value <= hi))
    if not ok:
        lo_s = f"> {lo}" if lo_open else f">= {lo}"
        hi_s = "" if hi is None else f" and {'<' if hi_open else '<='} {hi}"
        raise ConfigError(f"{key}={value!r} is not valid: allowed is a number {lo_s}{hi_s}")
    return float(value)


def _choice(cfg: Mapping, key: str, allowed: Sequence[str]) -> str:
    value = _need(cfg, key)
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not valid: allowed are {', '.join(allowed)}")
    return value


def _wrap(key: str, fn, *args):
    """Run a core validator and re-raise its ValueError as a ConfigError under ``key``."""
    try:
        return fn(*args)
    except ValueError as err:
        msg = str(err)
        raise ConfigError(msg if msg.startswith(key) else f"{key}: {msg}") from None


def check_profiles(cfg: Mapping, bits: list) -> None:
    profiles = _need(cfg, "strategy.profiles")
    if not isinstance(profiles, Sequence) or isinstance(profiles, str):
        raise ConfigError(f"strategy.profiles={profiles!r} is not valid: allowed is a list of {{name, share, bits[, width]}}")
    if not profiles:
        return
    names, total, widths = set(), 0.0, []
    for i, p in enumerate(profiles):
        key = f"strategy.profiles[{i}]"
        if not isinstance(p, Mapping) or not {"name", "share", "bits"} <= set(p) <= {"name", "share", "bits", "width"}:
            raise ConfigError(f"{key}={p!r} is not valid: allowed is a mapping with name, share, bits and optionally width")
        if not isinstance(p["name"], str) or not p["name"] or p["name"] in names:
            raise ConfigError(f"{key}.name={p['name']!r} is not valid: allowed is a non-empty name not used by another profile")
        names.add(p["name"])
        share = p["share"]
        if not isinstance(share, numbers.Real) or isinstance(share, bool) or not 0 < share <= 1:
            raise ConfigError(f"{key}.share={share!r} is not valid: allowed is a number > 0 and <= 1")
        total += float(share)
        pbits = p["bits"]
        if not isinstance(pbits, Sequence) or isinstance(pbits, str) or not pbits:
            raise ConfigError(f"{key}.bits={pbits!r} is not valid: allowed is a non-empty list of integers in 2..16 and fp")
        for b in pbits:
            if b != "fp" and (not isinstance(b, numbers.Integral) or isinstance(b, bool) or not 2 <= b <= 16):
                raise ConfigError(f"{key}.bits contains {b!r}: allowed are integers in 2..16 and fp")
        width = p.get("width", 1.0)
        if not isinstance(width, numbers.Real) or isinstance(width, bool) or not 0 < width <= 1:
            raise ConfigError(f"{key}.width={width!r} is not valid: allowed is a number > 0 and <= 1 (the share of "
                              "every hidden layer's channels its sub-model keeps)")
        widths.append(float(width))
        if _get(cfg, "strategy.name") == "qafedavg":
            allowed = [s for s in bits if s == FLOAT or s in [parse_setting(b) for b in pbits]]
            if not allowed:
                raise ConfigError(f"{key}.bits={list(pbits)} shares no bit-width with strategy.bits: "
                                  "allowed is a profile with at least one bit-width in strategy.bits")
    if abs(total - 1.0) > 1e-6:
        raise ConfigError(f"strategy.profiles shares sum to {total:g}: allowed is a sum of 1")
    if min(widths) < 1:
        check_widths(cfg)


def check_widths(cfg: Mapping) -> None:
    """What width profiles (HeteroFL sub-models) need: a model with a width, BatchNorm statistics
    collected by the server (HeteroFL's static BatchNorm), no weight freezing."""
    model = _get(cfg, "model.name")
    if model not in WIDTH_MODELS:
        raise ConfigError(f"strategy.profiles: a width below 1 needs a model with HeteroFL sub-models, and "
                          f"model.name={model} has none: allowed are {', '.join(WIDTH_MODELS)}")
    if _get(cfg, "eval.reestimate_bn") is not True:
        raise ConfigError("eval.reestimate_bn=false is not valid with width profiles: sub-models are evaluated "
                          "with BatchNorm statistics the server collects (HeteroFL's static BatchNorm); set it to true")
    if _get(cfg, "client.freeze_threshold"):
        raise ConfigError("client.freeze_threshold is not supported with width profiles (the frozen masks are "
                          "per entry of the full model); set it to 0 or give every profile width 1")

MIN_CALIBRATION = 32  # images: one batch for BatchNorm statistics and activation ranges


def check_holdout(cfg: Mapping, quantized: bool) -> None:
    """The server hold-out must leave ``MIN_CALIBRATION`` calibration images after the
    validation ones whenever a quantized setting is tested (or BatchNorm is re-estimated)."""
    holdout = _int(cfg, "dataset.holdout", 0)
    validation = _int(cfg, "dataset.validation", 0)
    if validation > holdout:
        raise ConfigError(f"dataset.validation={validation} is not valid: allowed is at most dataset.holdout={holdout} "
                          "(validation images are taken from the server hold-out)")
    if (quantized or _get(cfg, "eval.reestimate_bn") is True) and holdout - validation < MIN_CALIBRATION:
        raise ConfigError(f"dataset.holdout={holdout} is too small: it leaves {holdout - validation} calibration images "
                          f"after dataset.validation={validation}; allowed is dataset.holdout >= dataset.validation + "
                          f"{MIN_CALIBRATION} when quantized settings are tested or BatchNorm is re-estimated")


def validate(cfg: Mapping, servers: Mapping[str, Collection[str]]) -> None:
    """Raise :class:`ConfigError` for the first problem found in ``cfg``.

    ``servers`` maps each Flower server strategy name to the ``strategy.server_options`` it
    accepts (``strategies.server_options()``; passed in so this module stays free of Flower).
    """
    _int(cfg, "seed", 0)
    _int(cfg, "num_rounds", 1)
    num_clients = _int(cfg, "num_clients", 1)
    _int(cfg, "clients_per_round", 1, num_clients)

    _choice(cfg, "dataset.name", DATASETS)
    root = _need(cfg, "dataset.root")
    if root is not None:
        if not isinstance(root, str) or not root:
            raise ConfigError(f"dataset.root={root!r} is not valid: allowed is null or a folder path")
        path = Path(root).expanduser()
        if _get(cfg, "dataset.name") == "digits":
            raise ConfigError(f"dataset.root={root!r} is not valid for dataset.name=digits: digits is bundled "
                              "with scikit-learn; allowed is null")
        if not path.exists():
            raise ConfigError(f"dataset.root={root!r} does not exist: create the folder (a missing dataset is "
                              "downloaded into it) or set dataset.root=null to use the default places")
        if not path.is_dir():
            raise ConfigError(f"dataset.root={root!r} is not valid: it is a file, allowed is a folder")
    _choice(cfg, "model.name", MODELS)
    if not isinstance(_need(cfg, "model.options"), Mapping):
        raise ConfigError(f"model.options={_get(cfg, 'model.options')!r} is not valid: allowed is a mapping")
    allowed = model_options(_get(cfg, "model.name"))
    for key in _get(cfg, "model.options"):
        if key not in allowed:
            raise ConfigError(f"model.options.{key} is not valid for model.name={_get(cfg, 'model.name')}: "
                              f"allowed are {', '.join(allowed) or 'none'}")
    if _get(cfg, "model.options.norm") not in (_MISSING, "batch", "group"):
        _choice(cfg, "model.options.norm", ("batch", "group"))

    _choice(cfg, "strategy.name", STRATEGIES)
    server = _choice(cfg, "strategy.server", tuple(servers))
    options = _need(cfg, "strategy.server_options")
    if not isinstance(options, Mapping):
        raise ConfigError(f"strategy.server_options={options!r} is not valid: allowed is a mapping")
    for k in options:
        if k not in servers[server]:
            raise ConfigError(f"strategy.server_options.{k} is not valid for strategy.server={server}: "
                              f"allowed are {', '.join(sorted(servers[server]))}")
    sampling = _choice(cfg, "strategy.sampling", SAMPLING_MODES)
    bits = _wrap("strategy.bits", parse_settings, _need(cfg, "strategy.bits"), "strategy.bits")
    if sampling == "fixed" and len(bits) != 1 and _get(cfg, "strategy.name") == "qafedavg":
        raise ConfigError(f"strategy.bits={[str(b) for b in _get(cfg, 'strategy.bits')]} is not valid with "
                          "strategy.sampling=fixed: allowed is exactly one setting, e.g. [4]")
    check_profiles(cfg, bits)
    _int(cfg, "strategy.min_replies", 1, _get(cfg, "clients_per_round"))
    _choice(cfg, "strategy.on_too_few_replies", ON_TOO_FEW)
    _int(cfg, "strategy.max_retries", 0)
    _float(cfg, "faults.client_failure_rate", 0.0, 1.0, hi_open=True)
    _float(cfg, "faults.nan_client_rate", 0.0, 1.0)
    _int(cfg, "checkpoint.every", 0)
    _int(cfg, "checkpoint.keep", 1)
    if not isinstance(_need(cfg, "resume"), bool):
        raise ConfigError(f"resume={_get(cfg, 'resume')!r} is not valid: allowed are true, false")
    resume_from = _need(cfg, "resume_from")
    if resume_from is not None and not Path(str(resume_from)).expanduser().exists():
        raise ConfigError(f"resume_from={resume_from!r} is not valid: no such file or directory; "
                          "allowed is a checkpoint_r*.pt file or a run directory holding one")

    scheme = _choice(cfg, "partition.name", SCHEMES)
    if scheme == "dirichlet":
        _float(cfg, "partition.alpha", 0.0, lo_open=True)
        _int(cfg, "partition.min_size", 1)
    if scheme == "shards":
        _int(cfg, "partition.k", 1)

    _int(cfg, "client.local_epochs", 1)
    _float(cfg, "client.lr", 0.0, lo_open=True)
    _choice(cfg, "client.lr_schedule", LR_SCHEDULES)
    _float(cfg, "client.lr_min_factor", 0.0, 1.0)
    _int(cfg, "client.lr_step_rounds", 1)
    _float(cfg, "client.lr_gamma", 0.0, 1.0, lo_open=True)
    _int(cfg, "client.batch_size", 1)
    _float(cfg, "client.momentum", 0.0, 1.0, hi_open=True)
    _float(cfg, "client.weight_decay", 0.0)
    _choice(cfg, "client.regularizer", REGULARIZERS)
    _float(cfg, "client.reg_weight", 0.0)
    _float(cfg, "client.distill_weight", 0.0)
    _float(cfg, "client.distill_temperature", 0.0, lo_open=True)
    dampen = _float(cfg, "client.dampen_weight", 0.0)
    threshold = _float(cfg, "client.freeze_threshold", 0.0, 1.0)
    _float(cfg, "client.freeze_momentum", 0.0, 1.0, lo_open=True)
    if (dampen or threshold) and (_get(cfg, "strategy.name") != "qafedavg" or all(w is None for w, _ in bits)):
        key = "client.dampen_weight" if dampen else "client.freeze_threshold"
        raise ConfigError(f"{key}={dampen or threshold} needs quantization-aware training: use strategy=qafedavg "
                          f"with a quantized setting in strategy.bits, or set {key}=0")
    if threshold and _get(cfg, "quantization.learned_ranges"):
        raise ConfigError("client.freeze_threshold is not supported with quantization.learned_ranges=true (frozen "
                          "values are placed on the max-range grid); set one of them off")

    settings = _wrap("eval.settings", parse_settings, _need(cfg, "eval.settings"), "eval.settings")
    _int(cfg, "eval.every", 1)
    _choice(cfg, "eval.weight_range", WEIGHT_RANGES)
    _choice(cfg, "eval.act_range", ACT_RANGES)
    _float(cfg, "eval.act_percentile", 50.0, 100.0, lo_open=True)
    _choice(cfg, "eval.ptq", PTQ_METHODS)
    _int(cfg, "eval.adaround_iterations", 1)
    _choice(cfg, "eval.average", AVERAGES)
    _float(cfg, "eval.ema_decay", 0.0, 1.0, hi_open=True)
    _int(cfg, "eval.average_from", 1)
    check_holdout(cfg, quantized=any(s != FLOAT for s in settings) or bool(_get(cfg, "strategy.profiles")))
    for key in ("dataset.augment", "eval.reestimate_bn", "eval.bias_correction", "eval.initial", "simulation.retain_freed_memory"):
        if not isinstance(_need(cfg, key), bool):
            raise ConfigError(f"{key}={_get(cfg, key)!r} is not valid: allowed are true, false")
    _int(cfg, "eval.batch_size", 1)

    quant = _need(cfg, "quantization")
    try:
        QuantConfig(**dict(quant), weight_bits=None, act_bits=None)
    except TypeError as err:
        raise ConfigError(f"quantization: {err}; allowed keys are the QuantConfig fields (conf/quantization/default.yaml)") from None
    except ValueError as err:
        raise ConfigError(f"quantization.{err}") from None

    _float(cfg, "simulation.num_cpus_per_client", 0.0, lo_open=True)
    _float(cfg, "simulation.num_gpus_per_client", 0.0)
    _choice(cfg, "simulation.device", DEVICES)
    _float(cfg, "simulation.ray_timeout_s", 0.0, lo_open=True)
    address = _need(cfg, "simulation.ray_address")
    if address is not None and not isinstance(address, str):
        raise ConfigError(f"simulation.ray_address={address!r} is not valid: allowed is null, auto or host:port")
    if _choice(cfg, "logger.name", LOGGERS) == "wandb":
        mode = _get(cfg, "logger.mode")
        if mode not in (_MISSING, None):
            _choice(cfg, "logger.mode", WANDB_MODES)
