"""The experiment config schema: every key's type, default, allowed values and bounds, once.

Each section is a dataclass of :func:`fedquant.fields.key` fields. Hydra composes the config
from these defaults (``fedquant/hydra_conf.py`` registers :func:`defaults` in its ConfigStore as
``schema``, the first entry of conf/config.yaml's defaults list), then the config groups in
``conf/`` (model, dataset, strategy, partition, logger) set the keys marked ``REQUIRED`` here,
then the command line. :func:`fedquant.experiment.config.validate` checks a composed config
against the same fields and the cross-key rules, with one-line messages.

Sections owned by a core object take its fields: ``quantization`` is
:class:`fedquant.quant.QuantConfig` without the run-time bit-widths (pinned first/last layers on,
as deployed), and ``eval`` extends :class:`fedquant.learning.evaluation.EvalProtocol`, so the
protocol's defaults and allowed values are written where the evaluator reads them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..data import DATASETS, SCHEMES
from ..federation.aggregators import DP_MODES
from ..federation.attacks import ATTACKS
from ..federation.bitwidths import SAMPLING_MODES, parse_settings
from ..federation.compression import GRANULARITIES, OFF, ROUNDINGS
from ..federation.plan import ON_TOO_FEW, STRATEGIES
from ..federation.profiles import Profile, budget_value
from ..federation.schedule import LR_SCHEDULES
from ..federation.uplink import SEND
from ..fields import REQUIRED, key
from ..learning.evaluation import EvalProtocol
from ..learning.local_training import REGULARIZERS
from ..models import MODELS
from ..quant import QuantConfig
from ..quant.config import GRANULARITIES as WEIGHT_GRANULARITIES
from ..quant.config import SCALES
from .averaging import AVERAGES

LOGGERS = ("none", "wandb")
WANDB_MODES = ("online", "offline", "disabled")
DEVICES = ("auto", "cpu", "cuda")
DEFAULT_SETTINGS = ["fp", "w8a8", "w6a6", "w4a4", "w3a3", "w2a2"]


def _settings(name: str, value: Any) -> None:
    parse_settings(value, name)


@dataclass
class ModelConfig:
    name: str = key(doc="mlp | cnn | resnet20 | cct (the model group)", choices=MODELS)
    options: dict = key(doc="the model's constructor options (see fedquant/models)")


@dataclass
class DatasetConfig:
    name: str = key(doc="the dataset group: digits | fmnist | cifar10 | cifar100", choices=DATASETS)
    root: str | None = key(doc="folder with the files (or where to download them); null = the default places")
    holdout: int = key(doc="server hold-out, seen by no client: calibration + validation images", ge=0)
    validation: int = key(doc="of which validation (where choices are made); the rest calibrates", ge=0)
    augment: bool = key(doc="random crop + horizontal flip of training images, seeded")


@dataclass
class StrategyConfig:
    name: str = key(doc="fedavg (float training, post-training quantization) | qafedavg (QAT)", choices=STRATEGIES)
    bits: list = key(doc="the set B: integers (WbAb), 'wXaY' or 'fp' (float steps)", check=_settings)
    sampling: str = key(doc="per_step | per_layer (each layer its own draw every step) | per_round | fixed (B must then hold one setting)", choices=SAMPLING_MODES)
    server: str = key("fedavg", "Flower server strategy: fedavg | fedprox | fedavgm | fedadam | fedyogi | fedadagrad | "
                                "fedmedian | fedtrimmedavg | krum | multikrum | bulyan | qfedavg")
    server_options: dict = key({}, "passed to Flower's class, e.g. {proximal_mu: 0.01} or {eta: 0.01}")
    dp: str = key("none", "central differential privacy: Flower's server-side clipping wrapper, fixed or adaptive "
                          "(fedavg and fedprox only)", choices=DP_MODES)
    dp_options: dict = key({}, "passed to the wrapper, e.g. {noise_multiplier: 1.0, clipping_norm: 0.5}")
    profiles: list = key([], "device profiles, e.g. [{name: npu8, share: 0.5, bits: [8]}, "
                             "{name: mcu2, share: 0.5, bits: [2, 4], width: 0.5}]")
    min_replies: int = key(1, "fewer successful client replies in a round than this ...", ge=1)
    on_too_few_replies: str = key("retry", "... retries the round with a new sample (retry) or stops the run",
                                  choices=ON_TOO_FEW)
    max_retries: int = key(3, "retries of a round with too few replies", ge=0)
    qat_from_round: int = key(1, "warm start: rounds before this one train in float (FedAvg), QAT from it on", ge=1)
    progressive_rounds: int = key(0, "the lowest bit-widths of B enter over this many rounds from qat_from_round, "
                                     "highest first (0: all of B at once)", ge=0)


@dataclass
class ProfileConfig:
    """One entry of ``strategy.profiles``: a device class."""

    name: str = key(doc="the profile's name (unique)", check=lambda name, v: _name(name, v))
    share: float = key(doc="the share of clients that have it", gt=0, le=1)
    bits: list = key(doc="the settings it runs: integers, 'wXaY' or 'fp'", check=_settings)
    width: float = key(Profile.width, "the share of every hidden layer's channels its sub-model keeps (HeteroFL)",
                       gt=0, le=1)
    weight_granularity: str | None = key(None, "its weight scales: per_channel | per_tensor (null: quantization's)",
                                         choices=WEIGHT_GRANULARITIES)
    scale: str | None = key(None, "its scales: float | pow2 (null: quantization's)", choices=SCALES)
    budget: Any = key(None, "mixed precision: at most this many bytes (an integer) or this fraction of the float "
                            "model's bytes (0.125 or '1/8'); the server picks each layer's bits (null: none)",
                      check=lambda name, v: _budget(name, v))
    layer_bits: list | None = key(None, "the settings a layer may take under the budget (null: the profile's "
                                        "quantized bits)", check=lambda name, v: v is None or _settings(name, v))


def _budget(name: str, value: Any) -> None:
    try:
        budget = budget_value(value)
    except ValueError as err:
        raise ValueError(f"{name}{str(err).removeprefix('budget')}") from None
    if budget is not None and (budget <= 0 or not isinstance(budget, int) and budget > 1):
        raise ValueError(f"{name}={value!r} is out of range: allowed is a positive number of bytes (an integer) or a "
                         "fraction in (0, 1] of the float model's bytes")


def _name(name: str, value: Any) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name}={value!r} is not valid: allowed is a non-empty name not used by another profile")


@dataclass
class ClientConfig:
    lr: float = key(doc="local learning rate (set by the dataset group for its model)", gt=0.0)
    local_epochs: int = key(2, "local epochs per round", ge=1)
    lr_schedule: str = key("constant", "the lr over rounds: constant | cosine (to lr_min_factor x lr) | step",
                           choices=LR_SCHEDULES)
    lr_min_factor: float = key(0.0, "cosine: the floor it decays towards, as a fraction of client.lr", ge=0.0, le=1.0)
    lr_step_rounds: int = key(10, "step: multiply by lr_gamma every lr_step_rounds rounds", ge=1)
    lr_gamma: float = key(0.1, "step: the factor", gt=0.0, le=1.0)
    batch_size: int = key(32, "local batch size", ge=1)
    momentum: float = key(0.9, "SGD momentum", ge=0.0, lt=1.0)
    weight_decay: float = key(0.0, "SGD weight decay", ge=0.0)
    regularizer: str = key("none", "none | kure | gradl1 (any strategy)", choices=REGULARIZERS)
    reg_weight: float = key(0.0, "the regularizer's weight", ge=0.0)
    distill_weight: float = key(0.0, "in-place distillation: quantized steps also match the float logits (KL)", ge=0.0)
    distill_temperature: float = key(2.0, "the distillation temperature", gt=0.0)
    dampen_weight: float = key(0.0, "oscillation dampening (Nagel et al. 2022): lambda, cosine-annealed from 0 over "
                                    "rounds", ge=0.0)
    freeze_threshold: float = key(0.0, "weight freezing: freeze entries oscillating more often than this per local "
                                       "step (0 = off)", ge=0.0, le=1.0)
    freeze_momentum: float = key(0.5, "EMA over rounds of the pooled oscillation frequency", gt=0.0, le=1.0)


@dataclass(frozen=True)
class EvalConfig(EvalProtocol):
    settings: list = key(DEFAULT_SETTINGS, "the settings the server tests: fp, wXaY (every device profile's "
                                           "settings are added)", check=_settings)
    every: int = key(1, "evaluate every N rounds (and always after the last)", ge=1)
    initial: bool = key(True, "also evaluate the initial model (round 0)")
    average: str = key("none", "evaluate an average of the global models: none | ema | swa (training is "
                               "unchanged)", choices=AVERAGES)
    ema_decay: float = key(0.9, "ema: a_r = decay * a_(r-1) + (1 - decay) * w_r", ge=0.0, lt=1.0)
    average_from: int = key(1, "the first round averaged", ge=1)
    batch_size: int = key(256, "evaluation batch size", ge=1)


@dataclass
class FaultsConfig:
    client_failure_rate: float = key(0.0, "simulation only: share of sampled clients that raise", ge=0.0, lt=1.0)
    nan_client_rate: float = key(0.0, "simulation only: share of sampled clients that reply with NaN weights",
                                 ge=0.0, le=1.0)
    attack: str = key("none", "simulation only: hostile clients send sign_flip (w - (w_k - w)) | scale "
                              "(w + s (w_k - w)) | noise (w_k + N(0, std^2)) | malformed (a reply breaking the protocol)",
                      choices=ATTACKS)
    attack_rate: float = key(0.0, "share of sampled clients that attack each round (seeded)", ge=0.0, le=1.0)
    attack_scale: float = key(10.0, "scale: the factor s")
    attack_std: float = key(1.0, "noise: the standard deviation", ge=0.0)


def _link_bits(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not (1 <= value <= 16 or value == OFF):
        raise ValueError(f"{name}={value!r} is not valid: allowed is an integer in 1..16, or {OFF} (float32, off)")


@dataclass
class UplinkConfig:
    bits: int = key(OFF, "what a client sends, on a b-bit grid (1..16; 32 = float32, off)", check=_link_bits)
    rounding: str = key("stochastic", "stochastic (unbiased, QSGD) | nearest", choices=ROUNDINGS)
    granularity: str = key("per_tensor", "per_tensor | per_channel (a scale and offset per output channel)",
                           choices=GRANULARITIES)
    send: str = key("update", "update (client model - the model it received) | weights", choices=SEND)
    error_feedback: bool = key(False, "a client adds what the grid dropped from its last update to the next "
                                      "(updates only; client-private state)")


@dataclass
class DownlinkConfig:
    bits: int = key(OFF, "the model the server broadcasts, on a b-bit grid, nearest rounding (32 = off)",
                    check=_link_bits)
    granularity: str = key("per_tensor", "per_tensor | per_channel", choices=GRANULARITIES)


@dataclass
class CheckpointConfig:
    every: int = key(1, "save every N rounds (and after the last) in the run directory; 0 = never", ge=0)
    keep: int = key(3, "newest checkpoints kept (python -m fedquant.reevaluate --last K re-tests the last K)", ge=1)


@dataclass
class SimulationConfig:
    num_cpus_per_client: float = key(1, "CPU cores per client actor (Ray)", gt=0.0)
    num_gpus_per_client: float = key(0.0, "fractional GPUs per client, e.g. 0.25", ge=0.0)
    ray_address: str | None = key(None, "null: a fresh local Ray instance; or attach to a running cluster: auto | "
                                        "host:port")
    ray_timeout_s: float = key(30, "give up on ray_address after this long when nothing answers there", gt=0.0)
    device: str = key("auto", "auto (CUDA when present) | cpu | cuda", choices=DEVICES)
    verbose: bool = key(False, "Flower/Ray INFO logs")
    retain_freed_memory: bool = key(True, "keep freed heap memory in each process (glibc): no page faults per step")


@dataclass
class ExperimentConfig:
    seed: int = key(0, "every seeded draw derives from it", ge=0)
    num_rounds: int = key(30, "federated rounds", ge=1)
    num_clients: int = key(10, "client data partitions", ge=1)
    clients_per_round: int = key(4, "clients sampled each round (at most num_clients)", ge=1)
    resume: bool = key(False, "continue the newest checkpointed run under the output root (outputs/)")
    resume_from: str | None = key(None, "or continue this checkpoint file / run directory")
    init_from: str | None = key(None, "start from another run's final global model (a checkpoint file or run "
                                      "directory); training and evaluation as configured here")
    quiet: bool = key(False, "only the final table, no per-round progress")
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    dataset: DatasetConfig = dataclasses.field(default_factory=DatasetConfig)
    strategy: StrategyConfig = dataclasses.field(default_factory=StrategyConfig)
    client: ClientConfig = dataclasses.field(default_factory=ClientConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    faults: FaultsConfig = dataclasses.field(default_factory=FaultsConfig)
    uplink: UplinkConfig = dataclasses.field(default_factory=UplinkConfig)
    downlink: DownlinkConfig = dataclasses.field(default_factory=DownlinkConfig)
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
    simulation: SimulationConfig = dataclasses.field(default_factory=SimulationConfig)
    # sections whose keys depend on a group's choice: see VARIANTS and QUANTIZATION
    partition: dict = key(doc="the partition group: iid | dirichlet | shards")
    quantization: dict = key(doc="how the model is fake-quantized (QuantConfig's fields)")
    logger: dict = key(doc="the logger group: none | wandb")


@dataclass
class DirichletConfig:
    alpha: float = key(doc="smaller = more label skew", gt=0.0)
    min_size: int = key(doc="resample until every client holds this many samples", ge=1)


@dataclass
class ShardsConfig:
    k: int = key(doc="classes per client", ge=1)


@dataclass
class WandbConfig:
    mode: str | None = key(doc="online | offline | disabled; null: online when WANDB_API_KEY is set, else offline",
                           choices=WANDB_MODES)
    project: str = key(doc="W&B project")
    entity: str | None = key(doc="W&B entity (null: the default)")
    group: str | None = key(doc="null: the sweep's directory name in multirun, none for a single run")
    tags: list = key(doc="W&B tags")


@dataclass
class EmptyConfig:
    """A variant that adds no key (partition=iid, logger=none)."""


# section -> (the key naming the variant, {variant: the fields it adds})
VARIANTS: dict[str, tuple[str, tuple[str, ...], dict[str, type]]] = {
    "partition": ("name", SCHEMES, {"iid": EmptyConfig, "dirichlet": DirichletConfig, "shards": ShardsConfig}),
    "logger": ("name", LOGGERS, {"none": EmptyConfig, "wandb": WandbConfig}),
}
RUN_TIME_BITS = ("weight_bits", "act_bits")  # QuantConfig fields set per setting, not by the config
EXPERIMENT_QUANTIZATION = {"pin_first_last": True}  # the experiment's defaults that differ from QuantConfig's


def quantization_defaults() -> dict[str, Any]:
    """The ``quantization`` section's defaults: QuantConfig's, with the first and last layers
    pinned (as deployed)."""
    return {f.name: (EXPERIMENT_QUANTIZATION.get(f.name, f.default)) for f in dataclasses.fields(QuantConfig)
            if f.name not in RUN_TIME_BITS}


def _defaults(cls: type) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(f.default_factory):  # a nested section
            out[f.name] = _defaults(f.default_factory)
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
        else:
            out[f.name] = f.default
    return out


def defaults() -> dict[str, Any]:
    """The whole config's defaults as a plain dict (``REQUIRED`` where a group sets the value)."""
    out = _defaults(ExperimentConfig)
    out["partition"] = {"name": REQUIRED}
    out["logger"] = {"name": REQUIRED}
    out["quantization"] = quantization_defaults()
    return out
