"""What the server and the clients say to each other: record keys and the bit-usage encoding.

Both ``clients/`` and ``strategies/`` use these keys, so neither imports the other.
"""

from __future__ import annotations

from collections import Counter

from ..quant.config import MAX_BITS
from ..quant.scheme import Scheme
from .bitwidths import Setting, parse_setting, setting_name

ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"

# per-node train config
PARTITION = "data-partition"  # our client partition (Flower's node_config "partition-id" is the node's index)
SETTINGS = "settings"  # list[str]: the settings to train at (sampled per step or fixed)
SAMPLING = "sampling"  # per_step | per_layer | per_round | fixed
WIDTH = "width"  # the client's sub-model width (HeteroFL); its arrays travel cut to that width
WEIGHT_GRANULARITY, SCALE = "weight-granularity", "quant-scale"  # the client's quantizer scheme (its profile's)
SEED = "seed"
PROXIMAL_MU = "proximal-mu"  # set by Flower's FedProx
# shared train config: ConfigRecord key <- (config key under `client`, TrainConfig field, type)
LR = "lr"  # the round's learning rate (the shared record's, or the plan's schedule)
TRAIN_KEYS = {
    "local-epochs": ("local_epochs", "epochs", int), "batch-size": ("batch_size", "batch_size", int),
    LR: ("lr", "lr", float), "momentum": ("momentum", "momentum", float),
    "weight-decay": ("weight_decay", "weight_decay", float), "regularizer": ("regularizer", "regularizer", str),
    "reg-weight": ("reg_weight", "reg_weight", float),
    "distill-weight": ("distill_weight", "distill_weight", float),
    "distill-temperature": ("distill_temperature", "distill_temperature", float),
}
DAMPEN = "dampen-weight"  # the round's oscillation-dampening weight (annealed by the server)
TRACK_BITS = "track-bits"  # count weight oscillations on this bit-width's grid (0: do not count)
FROZEN = "frozen"  # ArrayRecord sent with the model: uint8 masks of the frozen weight entries
OSCILLATIONS = "oscillations"  # ArrayRecord in the reply: "<weight>|count" and "<weight>|intsum"
AUGMENT = "augment"  # bool: the dataset's training augmentation (dataset.augment)
# compressed communication (only sent when uplink or downlink is compressed; fedquant.federation.uplink)
ROUND = "round"  # fedquant's round number (the residual store is keyed by it)
DOWNLINK_BITS, DOWNLINK_GRANULARITY = "downlink-bits", "downlink-granularity"
UPLINK_BITS, UPLINK_ROUNDING, UPLINK_GRANULARITY = "uplink-bits", "uplink-rounding", "uplink-granularity"
UPLINK_SEND, ERROR_FEEDBACK = "uplink-send", "error-feedback"
STATE_KEEP_FROM = "state-keep-from"  # the server's newest checkpoint round: older residuals may go
INJECT_FAILURE = "inject-failure"  # simulation-only fault injection: the client raises
INJECT_NAN = "inject-nan"  # simulation-only fault injection: the client replies with NaN weights
# simulation-only hostile clients (fedquant.federation.attacks), sent only to the clients that attack
ATTACK = "attack"  # sign_flip | scale | noise | malformed
ATTACK_SCALE, ATTACK_STD = "attack-scale", "attack-std"  # scale: s; noise: sigma
MALFORMATION = "malformation"  # malformed: how the reply breaks the protocol

# reply metrics (identical key set in every reply, as Flower's aggregation requires)
NUM_EXAMPLES = "num-examples"
TRAIN_LOSS = "train-loss"
BITS_HIST = "bits-hist"  # list[int]: steps per (weight, act) setting, see encode_bits
TRAIN_SECONDS = "train-seconds"  # wall time of the client's local training
TRAIN_CPU_SECONDS = "train-cpu-seconds"  # CPU time of the worker thread during it
TRACKED_STEPS = "tracked-steps"  # local steps the oscillation counts cover (0: not counted)
NODE_INDEX = "node-index"  # the virtual node's index in the simulation engine (-1: unknown)
REPLY_METRICS = (NUM_EXAMPLES, TRAIN_LOSS, PARTITION, BITS_HIST, TRAIN_SECONDS, TRAIN_CPU_SECONDS, NODE_INDEX,
                 TRACKED_STEPS)  # every training reply's metric keys, no more, no fewer

_SIDE = MAX_BITS + 1  # index 0 = float, 2..16 = bits (1 unused)


def encode_bits(used: Counter) -> list[int]:
    """Steps per setting as a fixed-length list (17 x 17, row = weight bits, 0 = float)."""
    hist = [0] * (_SIDE * _SIDE)
    for name, steps in used.items():
        w, a = parse_setting(name)
        hist[(w or 0) * _SIDE + (a or 0)] += int(steps)
    return hist


def decode_bits(hist: list[int]) -> dict[str, int]:
    """Inverse of :func:`encode_bits`, keeping only settings that were used."""
    out = {}
    for i, steps in enumerate(hist):
        if steps:
            w, a = divmod(i, _SIDE)
            setting: Setting = (w or None, a or None)
            out[setting_name(setting)] = int(steps)
    return out


def train_record(client_cfg, augment: bool = False) -> dict:
    """The ``client`` config section (and ``dataset.augment``) as the shared training
    ConfigRecord's contents."""
    return {**{key: kind(client_cfg[name]) for key, (name, _, kind) in TRAIN_KEYS.items()}, AUGMENT: bool(augment)}


def train_fields(record) -> dict:
    """Inverse of :func:`train_record`: TrainConfig keyword arguments (plus FedProx's mu)."""
    fields = {field: kind(record[key]) for key, (_, field, kind) in TRAIN_KEYS.items()}
    fields["proximal_mu"] = float(record.get(PROXIMAL_MU, 0.0))
    fields["augment"] = bool(record.get(AUGMENT, False))
    fields["dampen_weight"] = float(record.get(DAMPEN, 0.0))
    fields["track_bits"] = int(record.get(TRACK_BITS, 0)) or None
    return fields


def scheme_record(scheme: Scheme) -> dict:
    """A client's quantizer scheme as per-node ConfigRecord entries."""
    return {WEIGHT_GRANULARITY: scheme.weight_granularity, SCALE: scheme.scale}


def received_scheme(record, default: Scheme) -> Scheme:
    """Inverse of :func:`scheme_record`; ``default`` (the run's scheme) where the record has none."""
    return Scheme(str(record.get(WEIGHT_GRANULARITY, default.weight_granularity)),
                  str(record.get(SCALE, default.scale)))
