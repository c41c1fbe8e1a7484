"""Flower ClientApp: local (quantization-aware) training at the bit-widths the server sends."""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedquant.experiment.workspace import (
    DataSpec,
    ModelSpec,
    build_quantized_model,
    federated_data,
    select_device,
)
from fedquant.federation import protocol as P
from fedquant.federation.attacks import attack_from_record, attacked_model, malform
from fedquant.federation.bitwidths import parse_setting, setting_source
from fedquant.learning.local_training import TrainConfig, train_local
from fedquant.models.state import float_state, load_float_state
from fedquant.models.width import extract
from fedquant.quant import quant_layers
from fedquant.quant.scheme import Scheme, set_scheme
from fedquant.runtime.allocator import retain_freed_memory

from .links import compressed, received_state, reply_arrays


class InjectedFailure(RuntimeError):
    """Raised on purpose when the server asks for a simulated client fault."""


@dataclass(frozen=True)
class ClientSetup:
    """Everything a worker needs to rebuild the experiment (picklable, hashable)."""

    data: DataSpec
    model: ModelSpec
    threads: int = 1
    device: str = "auto"
    retain_freed_memory: bool = True  # see fedquant.runtime.allocator
    state_dir: str | None = None  # client-private state (the error-feedback residuals), one folder per client


@functools.lru_cache(maxsize=4)
def _model(setup: ClientSetup, width: float = 1.0) -> torch.nn.Module:
    # One model object per worker process and width, re-loaded from the global arrays on every message.
    torch.set_num_threads(setup.threads)
    if setup.retain_freed_memory:
        retain_freed_memory()
    fed = federated_data(setup.data)
    return build_quantized_model(setup.model, fed.data, width=width).to(select_device(setup.device))


def node_partition(node_config, num_clients: int) -> int:
    """Deployment: the data partition this node holds, from its node config
    (``flower-supernode --node-config "partition-id=K num-partitions=N"``, N = ``num_clients``)."""
    if "partition-id" not in node_config:
        raise RuntimeError('this node has no partition-id: start it with --node-config "partition-id=K '
                           f'num-partitions={num_clients}"')
    partition, total = int(node_config["partition-id"]), int(node_config.get("num-partitions", num_clients))
    if total != num_clients or not 0 <= partition < num_clients:
        raise RuntimeError(f"node config partition-id={partition} num-partitions={total} does not fit "
                           f"num_clients={num_clients}: allowed is partition-id in 0..{num_clients - 1}")
    return partition


def handle_query(partition: int, msg: Message) -> Message:
    """Tell the server which data partition this node holds."""
    return Message(RecordDict({P.METRICS: MetricRecord({P.PARTITION: partition})}), reply_to=msg)


def handle_train(setup: ClientSetup, msg: Message, node_index: int = -1, own_partition: int | None = None) -> Message:
    """Local training of the partition the message names (in deployment, ``own_partition``: the
    one this node holds, which the message must name), on the sub-model of the width it names
    (the reply then carries the sub-model's arrays)."""
    cfg = msg.content.config_records[P.CONFIG]
    fed = federated_data(setup.data)
    client, seed = int(cfg[P.PARTITION]), int(cfg[P.SEED])
    if own_partition is not None and client != own_partition:
        raise RuntimeError(f"client {client}: sent to the node that holds partition {own_partition}")
    if cfg.get(P.INJECT_FAILURE, False):
        raise InjectedFailure(f"client {client}: injected failure (faults.client_failure_rate)")
    width = float(cfg.get(P.WIDTH, 1.0))
    model = _model(setup, width)
    device = next(model.parameters()).device
    state = msg.content.array_records[P.ARRAYS].to_torch_state_dict()
    links = compressed(cfg)
    if links:  # the broadcast on the downlink grid
        state = received_state(state, cfg, float_state(_model(setup)))
    if width < 1:  # HeteroFL: the first ceil(width * C) channels of every hidden layer
        state = extract(state, float_state(model))
    load_float_state(model, state)
    set_scheme(model, P.received_scheme(cfg, Scheme.of(dict(setup.model.quant))))  # the profile's, on the cached model
    next_setting = setting_source(str(cfg[P.SAMPLING]), [parse_setting(s) for s in cfg[P.SETTINGS]], seed,
                                  layers=sum(1 for _ in quant_layers(model)))
    frozen = None
    if P.FROZEN in msg.content.array_records:
        frozen = {k: v.bool() for k, v in msg.content.array_records[P.FROZEN].to_torch_state_dict().items()}
    start, cpu_start = time.perf_counter(), time.thread_time()
    try:
        result = train_local(model, fed.data, fed.clients[client], TrainConfig(**P.train_fields(cfg)), next_setting, seed,
                             device, frozen=frozen)
    except Exception as err:
        raise RuntimeError(f"client {client}: {type(err).__name__}: {err}") from err
    received, state = state, {k: v.cpu() for k, v in float_state(model).items()}
    attack = attack_from_record(cfg)  # simulation only: the server picked this client to attack
    if attack is not None:
        state = attacked_model(state, {k: v.cpu() for k, v in received.items()}, attack, seed)
    if cfg.get(P.INJECT_NAN, False):
        state = {k: torch.full_like(v, float("nan")) for k, v in state.items()}
    if links:
        state = reply_arrays(state, received, cfg, client, setup.state_dir)
    metrics = {P.NUM_EXAMPLES: result.num_examples, P.TRAIN_LOSS: result.loss,
               P.PARTITION: client, P.BITS_HIST: P.encode_bits(result.bits_used),
               P.TRAIN_SECONDS: time.perf_counter() - start,
               P.TRAIN_CPU_SECONDS: time.thread_time() - cpu_start, P.NODE_INDEX: node_index,
               P.TRACKED_STEPS: result.oscillations.steps if result.oscillations else 0}
    if attack is not None and attack.malformation:
        state, metrics = malform(state, metrics, attack.malformation)
    content = RecordDict({P.ARRAYS: ArrayRecord(state), P.METRICS: MetricRecord(metrics)})
    if result.oscillations is not None:
        content[P.OSCILLATIONS] = ArrayRecord(oscillation_arrays(result.oscillations))
    return Message(content, reply_to=msg)


def oscillation_arrays(counter) -> dict[str, torch.Tensor]:
    """A client's oscillation counts and integer sums, keyed ``<weight>|count`` / ``<weight>|intsum``."""
    return {**{f"{k}|count": v.cpu() for k, v in counter.counts.items()},
            **{f"{k}|intsum": v.cpu() for k, v in counter.integer_sums.items()}}


def make_client_app(setup: ClientSetup) -> ClientApp:
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        # Flower numbers the simulation's virtual nodes 0..n-1 in node_config["partition-id"] (unrelated
        # to our data partitions); the strategy uses it to order its messages (see QuantAwareMixin).
        return handle_train(setup, msg, int(context.node_config.get("partition-id", -1)))

    return app
