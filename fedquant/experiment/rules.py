"""The cross-key rules of the experiment config, in the order :func:`fedquant.experiment.config.validate`
runs them (after every key has been checked against its field in the schema): each raises
:class:`ConfigError` with one line."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path

from ..federation import aggregators as A
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


def check_schemes(cfg: Mapping, servers) -> None:
    """A profile's own quantizer scheme (``weight_granularity``, ``scale``) must be one it can run:
    it quantizes something, its weight ranges exist at that granularity (a per-tensor state has no
    per-channel ranges; learned ranges keep their own granularity), and no weight freezing (the
    server freezes on the run's grid)."""
    quant = cfg["quantization"]
    for i, p in enumerate(cfg["strategy"]["profiles"]):
        own = {k: p[k] for k in ("weight_granularity", "scale") if p.get(k) is not None}
        if not own:
            continue
        name, (k, v) = f"strategy.profiles[{i}]", next(iter(own.items()))
        if all(s == FLOAT for s in parse_settings(p["bits"], f"{name}.bits")):
            raise ConfigError(f"{name}.{k}={v!r} is not valid: the profile runs only fp, which has no quantizer "
                              "scales; remove it or give the profile a quantized setting")
        granularity, run = own.get("weight_granularity", quant["weight_granularity"]), quant["weight_granularity"]
        if granularity != run and (run == "per_tensor" or quant["learned_ranges"]):
            why = "learned ranges (quantization.learned_ranges=true) keep" if quant["learned_ranges"] else \
                "the shared weight ranges have"
            raise ConfigError(f"{name}.weight_granularity={granularity!r} is not valid with quantization."
                              f"weight_granularity={run}: {why} one per {run.removeprefix('per_')}; allowed is {run}")
        differs = [(key, value) for key, value in own.items() if value != quant[key]]
        if cfg["client"]["freeze_threshold"] and differs:
            raise ConfigError(f"client.freeze_threshold is not supported with {name}.{differs[0][0]}="
                              f"{differs[0][1]!r} (the server freezes weights on the run's grid); set it to 0 or "
                              "remove the profile's scheme")


def check_budgets(cfg: Mapping, servers) -> None:
    """A mixed-precision ``budget`` needs quantized settings for its layers (``layer_bits``, or the
    profile's bits), and ``layer_bits`` means nothing without one. Whether the model can meet the
    budget is checked when the model is built (:func:`fedquant.experiment.specs.server_evaluator`)."""
    for i, p in enumerate(cfg["strategy"]["profiles"]):
        name = f"strategy.profiles[{i}]"
        if p.get("budget") is None:
            if p.get("layer_bits"):
                raise ConfigError(f"{name}.layer_bits is only used with a budget: set {name}.budget or remove it")
            continue
        given = "layer_bits" if p.get("layer_bits") else "bits"
        if all(s == FLOAT for s in parse_settings(p[given], f"{name}.{given}")):
            raise ConfigError(f"{name}.budget needs quantized settings for its layers: {name}.{given}="
                              f"{list(p[given])} has none; allowed is e.g. layer_bits: [2, 4, 8]")


def _has_widths(cfg: Mapping) -> bool:
    return any(float(p.get("width", 1.0)) < 1 for p in cfg["strategy"]["profiles"])


def _number(name: str, value, low: float, *, strict: bool = False, high: float | None = None, integer: bool = False,
            allowed: str = "") -> None:
    kind = int if integer else (int, float)
    ok = isinstance(value, kind) and not isinstance(value, bool) and (value > low if strict else value >= low) \
        and (high is None or value < high)
    if not ok:
        raise ConfigError(f"{name}={value!r} is not valid: allowed is {allowed}")


def check_aggregator(cfg: Mapping, servers) -> None:
    """What the server strategy's aggregation rule needs (fedquant/federation/aggregators.py
    states the rules): a weighted mean with width profiles, enough replies per round for Krum's
    and Bulyan's tolerance f, and options within their bounds."""
    server, options, n = cfg["strategy"]["server"], cfg["strategy"]["server_options"], cfg["clients_per_round"]
    if server not in A.MEAN_SERVERS and _has_widths(cfg):
        raise ConfigError(f"strategy.server={server} is not valid with width profiles: a sub-model's untouched "
                          "entries are filled with their holders' mean (strategies/sub_models.py), which only a "
                          f"weighted mean keeps; allowed are {', '.join(A.MEAN_SERVERS)}")
    if "num_malicious_nodes" in options:
        _number("strategy.server_options.num_malicious_nodes", options["num_malicious_nodes"], 0, integer=True,
                allowed="an integer >= 0")
    f, need = A.malicious(options), A.min_replies(server, options)
    if n < need:
        raise ConfigError(f"clients_per_round={n} is too few for strategy.server={server} with num_malicious_nodes={f}: "
                          f"its rule needs {A.requirement(server)} replies, i.e. clients_per_round >= {need}")
    if server == "multikrum":
        _number("strategy.server_options.num_nodes_to_select", options.get("num_nodes_to_select", 1), 1,
                high=n - f + 1, integer=True, allowed=f"an integer in 1..{n - f} (at most clients_per_round - f)")
    if server == "fedtrimmedavg":
        _number("strategy.server_options.beta", options.get("beta", 0.2), 0, high=0.5,
                allowed="a fraction in [0, 0.5) cut off each end")
    if server == "qfedavg":
        for name in ("client_learning_rate", "q"):
            if name in options:
                _number(f"strategy.server_options.{name}", options[name], 0, strict=name != "q",
                        allowed="a number > 0" if name != "q" else "a number >= 0")


def check_privacy(cfg: Mapping, servers) -> None:
    """``strategy.dp``: Flower's server-side DP wrappers, over a plain mean of full models, with
    their own options (the bounds Flower's constructors check)."""
    strat = cfg["strategy"]
    dp, options = strat["dp"], strat["dp_options"]
    if dp == "none":
        if options:
            raise ConfigError(f"strategy.dp_options.{next(iter(options))} is set but strategy.dp=none: set strategy.dp "
                              f"to {' or '.join(A.DP_MODES[1:])}, or remove the options")
        return
    if strat["server"] not in A.DP_SERVERS:
        raise ConfigError(f"strategy.dp={dp} is not valid with strategy.server={strat['server']}: the noise sigma C / m "
                          "is calibrated to a plain mean of m clipped updates, which that server's aggregate is not; "
                          f"allowed are {', '.join(A.DP_SERVERS)}")
    if _has_widths(cfg):
        raise ConfigError(f"strategy.dp={dp} is not valid with width profiles: a sub-model reply is clipped after its "
                          "untouched entries were filled with other clients' mean, so one client's reply no longer "
                          "bounds its own contribution; give every profile width 1")
    for k in options:
        if k not in A.DP_OPTIONS[dp]:
            raise ConfigError(f"strategy.dp_options.{k} is not valid for strategy.dp={dp}: "
                              f"allowed are {', '.join(A.DP_OPTIONS[dp])}")
    for k in A.DP_REQUIRED[dp]:
        if k not in options:
            raise ConfigError(f"strategy.dp={dp} needs strategy.dp_options.{k}")
    name = "strategy.dp_options."
    _number(name + "noise_multiplier", options["noise_multiplier"], 0, allowed="a number >= 0")
    if dp == "server_fixed":
        _number(name + "clipping_norm", options["clipping_norm"], 0, strict=True, allowed="a number > 0")
        return
    for k in ("initial_clipping_norm", "clip_norm_lr"):
        if k in options:
            _number(name + k, options[k], 0, strict=True, allowed="a number > 0")
    if "target_clipped_quantile" in options:
        _number(name + "target_clipped_quantile", options["target_clipped_quantile"], 0, high=1.0000001,
                allowed="a fraction in [0, 1]")
    stddev = options.get("clipped_count_stddev")
    if stddev is not None:
        _number(name + "clipped_count_stddev", stddev, 0, allowed="null or a number >= 0")
    sigma, count_std = options["noise_multiplier"], stddev if stddev is not None else cfg["clients_per_round"] / 20
    if sigma > 0 and sigma >= 2 * count_std:
        raise ConfigError(f"{name}noise_multiplier={sigma} is not valid: adaptive clipping needs noise_multiplier < "
                          f"2 x clipped_count_stddev = {2 * count_std:g} (clipped_count_stddev defaults to "
                          "clients_per_round / 20); raise clipped_count_stddev or lower noise_multiplier")


def check_attack(cfg: Mapping, servers) -> None:
    """A hostile-client simulation names its attack and the share of clients that make it."""
    faults = cfg["faults"]
    if (faults["attack"] == "none") != (faults["attack_rate"] == 0):
        if faults["attack"] == "none":
            raise ConfigError(f"faults.attack_rate={faults['attack_rate']} does nothing with faults.attack=none: set "
                              "faults.attack (sign_flip, scale, noise, malformed) or faults.attack_rate=0")
        raise ConfigError(f"faults.attack={faults['attack']} needs faults.attack_rate > 0 (the share of sampled "
                          "clients that attack each round)")


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
         check_aggregator, check_privacy, check_attack, check_schemes, check_budgets, check_oscillation, check_recipes, check_links, check_resume, check_holdout)
MACHINE_RULES = (check_dataset_root, check_resume)  # about the machine a run starts on, not the run
