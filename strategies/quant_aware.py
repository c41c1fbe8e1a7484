"""Quantization-aware bit-width assignment layered on any Flower Message-API strategy.

``build_strategy("fedadam", plan)`` returns an instance of ``QuantAware(FedAdam)``: Flower's own
``configure_train``/``aggregate_train`` run unchanged (FedProx still injects ``proximal-mu``,
FedOpt still tracks its moments); the mixin only

1. splits Flower's one shared training record into one Message per node, carrying that client's
   partition, bit-widths and seed;
2. hands the replies to Flower's aggregation in partition order, so results do not depend on
   arrival order;
3. handles faults: failed replies are dropped and reported by client id; with fewer than
   ``min_replies`` successes the round is retried with a fresh sample (``on_too_few="retry"``,
   up to ``max_retries``) or the run stops (``"stop"``); non-finite losses or weights stop the
   run (:class:`DivergenceError`) and that round's global model is discarded;
4. can start at a later round (``round_offset``) with restored server-optimizer state, which is
   what makes checkpoint/resume exact.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp.strategy import FedAdam, FedAvg, FedAvgM, FedProx

from fedquant import protocol as P

from .plan import TrainingPlan

SERVERS = {"fedavg": FedAvg, "fedprox": FedProx, "fedavgm": FedAvgM, "fedadam": FedAdam}
ON_TOO_FEW = ("retry", "stop")
SERVER_STATE = ("current_arrays", "momentum_vector", "m_t", "v_t")  # FedAvgM / FedOpt attributes


class TooFewReplies(RuntimeError):
    """A round ended with fewer successful replies than ``min_replies``."""


class DivergenceError(RuntimeError):
    """Non-finite values reached the server."""


@dataclass
class ClientReport:
    """One client's training reply, as the server saw it."""

    partition: int
    profile: str | None
    num_examples: int
    loss: float
    bits_used: dict[str, int]
    seconds: float = 0.0  # the client's local training wall time
    cpu_seconds: float = 0.0  # CPU time of the training thread meanwhile (< seconds when preempted)


@dataclass
class RoundReport:
    clients: list[ClientReport] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # "client <id>: <reason>"
    retries: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> RoundReport:
        return cls([ClientReport(**c) for c in d["clients"]], list(d["failures"]), int(d.get("retries", 0)))


def aggregate_train_metrics(records: list[RecordDict], weight_key: str) -> MetricRecord:
    """Example-weighted mean train loss; summed examples and bit-usage histograms."""
    metrics = [next(iter(r.metric_records.values())) for r in records]
    total = sum(float(m[weight_key]) for m in metrics)
    hist = [sum(col) for col in zip(*(m[P.BITS_HIST] for m in metrics), strict=True)]
    loss = sum(float(m[P.TRAIN_LOSS]) * float(m[weight_key]) for m in metrics) / max(total, 1.0)
    return MetricRecord({P.TRAIN_LOSS: loss, weight_key: int(total), P.BITS_HIST: hist})


def _reason(text: str) -> str:
    """The client's own exception message out of Flower's error reason (which wraps it as
    "... Exception ClientAppException occurred. Message: <message>'>")."""
    text = str(text).strip()
    if "Message: " in text:
        text = text.rsplit("Message: ", 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (lines[-1] if lines else "unknown error").removesuffix("'>").strip()[:300]


class QuantAwareMixin:
    """Mix in before a Flower strategy class (see :func:`build_strategy`)."""

    def __init__(self, *, plan: TrainingPlan, min_replies: int = 1, on_too_few: str = "retry",
                 max_retries: int = 3, client_work: list[int] | None = None, **kwargs) -> None:
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
        self.min_replies = min_replies
        self.on_too_few = on_too_few
        self.max_retries = max_retries
        self.round_offset = 0
        self.reports: dict[int, RoundReport] = {}
        self._pending: dict = {}
        self.client_work = client_work  # e.g. examples per client: the largest jobs are sent first
        self._node_index: dict[int, int] = {}  # node id -> its index in the engine, from replies

    # -- sending ------------------------------------------------------------------------------
    def _dispatch_order(self, messages: list[Message], clients: list[int]) -> tuple[list[Message], list[int]]:
        """Pair the largest clients with the nodes the engine serves first (longest job first).

        Flower's simulation engine queues the round's messages in the order of its node indices
        and hands them to the workers as they free up; sending the longest local trainings first
        shortens the round (the last job to finish is a short one). Results do not depend on it:
        a client's training depends only on its partition, seed and bit-widths, and replies are
        aggregated in client order.
        """
        messages = sorted(messages, key=lambda m: (self._node_index.get(m.metadata.dst_node_id, len(messages)),
                                                   m.metadata.dst_node_id))
        if self.client_work is not None:
            clients = sorted(clients, key=lambda c: (-self.client_work[c], c))
        return messages, clients

    def _node_messages(self, r: int, arrays, config: ConfigRecord, grid, attempt: int) -> list[Message]:
        messages, clients = self._dispatch_order(list(super().configure_train(r, arrays, config, grid)),
                                                 self.plan.sample_clients(r, attempt))
        if len(messages) != len(clients):
            raise RuntimeError(f"round {r}: {len(messages)} nodes for {len(clients)} sampled clients")
        out, node_client = [], {}
        for msg, client in zip(messages, clients, strict=True):
            sampling, settings = self.plan.assignment(r, client)
            node_config = ConfigRecord({
                **dict(msg.content.config_records[self.configrecord_key]),
                P.PARTITION: client, P.SAMPLING: sampling, P.SETTINGS: settings,
                P.SEED: self.plan.client_seed(r, client),
                P.INJECT_FAILURE: self.plan.injects_failure(r, client, attempt),
                P.INJECT_NAN: self.plan.injects_nan(r, client),
            })
            content = RecordDict({self.arrayrecord_key: msg.content.array_records[self.arrayrecord_key],
                                  self.configrecord_key: node_config})
            node = msg.metadata.dst_node_id
            node_client[node] = client
            out.append(Message(content=content, message_type=MessageType.TRAIN, dst_node_id=node))
        self._pending["node_client"] = node_client
        return out

    def configure_train(self, server_round: int, arrays, config: ConfigRecord, grid) -> Iterable[Message]:
        # Flower samples every node (fraction 1.0 of clients_per_round nodes) and applies its own
        # per-strategy state/config; we choose the partitions with our seeded plan.
        r = server_round + self.round_offset
        self._pending = {"arrays": arrays, "config": config, "grid": grid}
        return self._node_messages(r, arrays, config, grid, attempt=0)

    # -- receiving ----------------------------------------------------------------------------
    def _split(self, replies: list[Message], report: RoundReport) -> list[Message]:
        node_client = self._pending.get("node_client", {})
        for r in replies:
            if r.has_error():
                node = r.metadata.src_node_id
                who = f"client {node_client[node]}" if node in node_client else f"node {node}"
                reason = _reason(r.error.reason)
                report.failures.append(reason if reason.startswith(f"{who}:") else f"{who}: {reason}")
        return [r for r in replies if not r.has_error()]

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        r = server_round + self.round_offset
        report = RoundReport()
        good = self._split(list(replies), report)
        attempt = 0
        while len(good) < self.min_replies:
            summary = (f"round {r}: {len(good)} of {self.plan.clients_per_round} clients replied, "
                       f"fewer than strategy.min_replies={self.min_replies}")
            if self.on_too_few == "stop" or attempt >= self.max_retries or "grid" not in self._pending:
                reasons = "; ".join(report.failures[-self.plan.clients_per_round:])
                action = "stopping (strategy.on_too_few_replies=stop)" if self.on_too_few == "stop" \
                    else f"stopping after {attempt} retries (strategy.max_retries={self.max_retries})"
                raise TooFewReplies(f"{summary}; {action}. Failures: {reasons}")
            attempt += 1
            report.retries = attempt
            logging.getLogger("fedquant").warning("%s; retrying with a new sample (%d/%d)", summary, attempt, self.max_retries)
            grid = self._pending["grid"]
            messages = self._node_messages(r, self._pending["arrays"], self._pending["config"], grid, attempt)
            good = self._split(list(grid.send_and_receive(messages)), report)
        good.sort(key=lambda m: int(m.content.metric_records[P.METRICS][P.PARTITION]))
        for reply in good:
            index = int(reply.content.metric_records[P.METRICS].get(P.NODE_INDEX, -1))
            if index >= 0:
                self._node_index[reply.metadata.src_node_id] = index
        self._stop_if_nonfinite(r, good, check_weights=False)  # losses: scalars, cheap
        for reply in good:
            m = reply.content.metric_records[P.METRICS]
            client = int(m[P.PARTITION])
            report.clients.append(ClientReport(client, self.plan.profile_name(client), int(m[P.NUM_EXAMPLES]),
                                               float(m[P.TRAIN_LOSS]), P.decode_bits(m[P.BITS_HIST]),
                                               float(m[P.TRAIN_SECONDS]), float(m[P.TRAIN_CPU_SECONDS])))
        self.reports[r] = report
        arrays, metrics = super().aggregate_train(r, good)
        # NaN/Inf in any reply's weights propagates into the (weighted) aggregate, so the replies
        # are only scanned, to name the clients, when the aggregate is not finite.
        if arrays is not None and not all(np.isfinite(a.numpy()).all() for a in arrays.values()):
            self._stop_if_nonfinite(r, good, check_weights=True)
            raise DivergenceError(f"round {r}: the aggregated global model has NaN/Inf values "
                                  f"(strategy.server={type(self).__mro__[2].__name__}); stopping")
        return arrays, metrics

    @staticmethod
    def _stop_if_nonfinite(r: int, replies: list[Message], check_weights: bool) -> None:
        """Raise :class:`DivergenceError` naming every client whose loss (or weights) is NaN/Inf."""
        bad = []
        for reply in replies:
            m = reply.content.metric_records[P.METRICS]
            what = []
            if not np.isfinite(float(m[P.TRAIN_LOSS])):
                what.append(f"loss {float(m[P.TRAIN_LOSS])}")
            if check_weights and not all(np.isfinite(a.numpy()).all()
                                         for a in reply.content.array_records[P.ARRAYS].values()):
                what.append("weights")
            if what:
                bad.append(f"client {int(m[P.PARTITION])} ({', '.join(what)})")
        if bad:
            raise DivergenceError(f"round {r}: non-finite values from {', '.join(bad)}; stopping, this round's "
                                  "global model is discarded (lower client.lr, or check those clients' data)")

    # -- checkpointing ------------------------------------------------------------------------
    def server_state(self) -> dict:
        """Flower's server-optimizer state as tensors (for a weights-only checkpoint)."""
        state = {}
        for name in SERVER_STATE:
            value = getattr(self, name, None)
            if isinstance(value, ArrayRecord):
                state[name] = {"record": {k: torch.from_numpy(np.array(a.numpy())) for k, a in value.items()}}
            elif isinstance(value, dict):
                state[name] = {"dict": {k: torch.from_numpy(np.array(v)) for k, v in value.items()}}
            elif isinstance(value, list):
                state[name] = {"list": [torch.from_numpy(np.array(v)) for v in value]}
        return state

    def load_server_state(self, state: dict) -> None:
        for name, value in state.items():
            if "record" in value:
                setattr(self, name, ArrayRecord({k: Array(v.numpy()) for k, v in value["record"].items()}))
            elif "dict" in value:
                setattr(self, name, {k: v.numpy() for k, v in value["dict"].items()})
            else:
                setattr(self, name, [v.numpy() for v in value["list"]])


def build_strategy(server: str, plan: TrainingPlan, *, min_replies: int = 1, on_too_few: str = "retry",
                   max_retries: int = 3, **server_options) -> FedAvg:
    """A ``QuantAware<Server>`` instance; ``server_options`` go to Flower's class (e.g. ``proximal_mu``)."""
    if server not in SERVERS:
        raise ValueError(f"strategy.server={server!r} is not valid: allowed are {', '.join(SERVERS)}")
    base = SERVERS[server]
    cls = type(f"QuantAware{base.__name__}", (QuantAwareMixin, base), {})
    return cls(plan=plan, min_replies=min_replies, on_too_few=on_too_few, max_retries=max_retries, **server_options)
