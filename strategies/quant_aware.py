"""Quantization-aware bit-width assignment layered on any Flower Message-API strategy.

``build_strategy("fedadam", plan)`` returns an instance of ``QuantAware(FedAdam)``: Flower's own
``configure_train``/``aggregate_train`` run unchanged (FedProx still injects ``proximal-mu``,
FedOpt still tracks its moments); the mixin only (1) splits Flower's one shared training record
into one Message per node with that client's partition, bit-widths and seed, and (2) hands the
replies to Flower's aggregation in partition order, so results do not depend on arrival order.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from flwr.app import ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAdam, FedAvg, FedAvgM, FedProx

from fedquant import protocol as P

from .plan import TrainingPlan

SERVERS = {"fedavg": FedAvg, "fedprox": FedProx, "fedavgm": FedAvgM, "fedadam": FedAdam}


@dataclass
class ClientReport:
    """One client's training reply, as the server saw it."""

    partition: int
    profile: str | None
    num_examples: int
    loss: float
    bits_used: dict[str, int]


@dataclass
class RoundReport:
    clients: list[ClientReport] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # "node <id>: <reason>"


def aggregate_train_metrics(records: list[RecordDict], weight_key: str) -> MetricRecord:
    """Example-weighted mean train loss; summed examples and bit-usage histograms."""
    metrics = [next(iter(r.metric_records.values())) for r in records]
    total = sum(float(m[weight_key]) for m in metrics)
    hist = [sum(col) for col in zip(*(m[P.BITS_HIST] for m in metrics), strict=True)]
    loss = sum(float(m[P.TRAIN_LOSS]) * float(m[weight_key]) for m in metrics) / max(total, 1.0)
    return MetricRecord({P.TRAIN_LOSS: loss, weight_key: int(total), P.BITS_HIST: hist})


class QuantAwareMixin:
    """Mix in before a Flower strategy class (see :func:`build_strategy`)."""

    def __init__(self, *, plan: TrainingPlan, **kwargs) -> None:
        n = plan.clients_per_round
        flwr_logger = logging.getLogger("flwr")
        level = flwr_logger.level
        flwr_logger.setLevel(logging.ERROR)  # silence "fraction_evaluate is 0": the server evaluates
        try:
                super().__init__(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=n,
                             min_available_nodes=n, weighted_by_key=P.NUM_EXAMPLES,
                             arrayrecord_key=P.ARRAYS, configrecord_key=P.CONFIG,
                             train_metrics_aggr_fn=aggregate_train_metrics, **kwargs)
        finally:
            flwr_logger.setLevel(level)
        self.plan = plan
        self.reports: dict[int, RoundReport] = {}

    def configure_train(self, server_round: int, arrays, config: ConfigRecord, grid) -> Iterable[Message]:
        # Flower samples every node (fraction 1.0 of clients_per_round nodes) and applies its own
        # per-strategy state/config; we then choose the partitions with our seeded plan.
        messages = sorted(super().configure_train(server_round, arrays, config, grid),
                          key=lambda m: m.metadata.dst_node_id)
        clients = self.plan.sample_clients(server_round)
        if len(messages) != len(clients):
            raise RuntimeError(f"round {server_round}: {len(messages)} nodes for {len(clients)} sampled clients")
        out = []
        for msg, client in zip(messages, clients, strict=True):
            sampling, settings = self.plan.assignment(server_round, client)
            node_config = ConfigRecord({
                **dict(msg.content.config_records[self.configrecord_key]),
                P.PARTITION: client, P.SAMPLING: sampling, P.SETTINGS: settings,
                P.SEED: self.plan.client_seed(server_round, client),
            })
            content = RecordDict({self.arrayrecord_key: msg.content.array_records[self.arrayrecord_key],
                                  self.configrecord_key: node_config})
            out.append(Message(content=content, message_type=MessageType.TRAIN, dst_node_id=msg.metadata.dst_node_id))
        return out

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        replies = list(replies)
        good = [r for r in replies if not r.has_error()]
        good.sort(key=lambda r: int(r.content.metric_records[P.METRICS][P.PARTITION]))
        report = RoundReport(failures=[f"node {r.metadata.src_node_id}: {r.error.reason}" for r in replies if r.has_error()])
        for r in good:
            m = r.content.metric_records[P.METRICS]
            client = int(m[P.PARTITION])
            report.clients.append(ClientReport(client, self.plan.profile_name(client), int(m[P.NUM_EXAMPLES]),
                                               float(m[P.TRAIN_LOSS]), P.decode_bits(m[P.BITS_HIST])))
        self.reports[server_round] = report
        return super().aggregate_train(server_round, good)


def build_strategy(server: str, plan: TrainingPlan, **server_options) -> FedAvg:
    """A ``QuantAware<Server>`` instance; ``server_options`` go to Flower's class (e.g. ``proximal_mu``)."""
    if server not in SERVERS:
        raise ValueError(f"strategy.server={server!r} is not valid: allowed are {', '.join(SERVERS)}")
    base = SERVERS[server]
    cls = type(f"QuantAware{base.__name__}", (QuantAwareMixin, base), {})
    return cls(plan=plan, **server_options)
