"""Quantization-aware bit-width assignment layered on any Flower Message-API strategy.

``build_strategy("fedadam", plan)`` returns an instance of ``QuantAware(FedAdam)``: Flower's own
``configure_train``/``aggregate_train`` run unchanged (FedProx still injects ``proximal-mu``,
FedOpt still tracks its moments); the mixin only adds small hooks around them:

- :meth:`~QuantAwareMixin.node_messages`: Flower's one shared training record becomes one
  Message per sampled client, carrying its partition, bit-widths, seed and the round's learning
  rate, dealt out over the connected nodes (in deployment: sent to the node holding it);
- :meth:`~QuantAwareMixin.successful_replies` and :meth:`~QuantAwareMixin.retry_until_enough`:
  failed replies are dropped and named; with fewer than ``min_replies`` successes the round is
  retried with a fresh sample (``on_too_few="retry"``, up to ``max_retries``) or the run stops;
- :meth:`~QuantAwareMixin.round_report`: the replies, in partition order, as a
  :class:`RoundReport` handed to ``on_report``; non-finite losses or weights stop the run
  (:class:`DivergenceError`) and that round's global model is discarded;
- :meth:`~QuantAwareMixin.fill_sub_models`: with width profiles (HeteroFL) the replies' sub-models
  are expanded so that Flower's average becomes each entry's average over the clients holding it;
- :meth:`~QuantAwareMixin.freeze_oscillating`: with ``client.freeze_threshold``, pool the
  clients' oscillation counts, freeze the weights that oscillate too often and keep them frozen
  in the aggregate (:mod:`fedquant.federation.freezing` states the design);
- :meth:`~QuantAwareMixin.resume_at`: start at a later round with restored server-optimizer
  (and freezing) state, which is what makes checkpoint/resume exact.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

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

from fedquant.federation import protocol as P
from fedquant.federation.freezing import FreezeState
from fedquant.federation.plan import TrainingPlan
from fedquant.federation.reports import ClientReport, RoundReport
from fedquant.models.width import overlap_fill

from .faults import DivergenceError, TooFewReplies, failure_reason, is_finite, stop_if_nonfinite
from .server_state import export_server_state, import_server_state

ReportSink = Callable[[int, RoundReport], None]


def flower_settings() -> dict:
    """The Flower strategy arguments the mixin fixes: every connected node is asked for (at least
    one must be), the plan picks the client partitions and deals them out over those nodes, the
    server evaluates itself, replies are weighted by example count, and the round's train metrics
    come from its :class:`RoundReport` (Flower's averaging is skipped)."""
    return {"fraction_train": 1.0, "fraction_evaluate": 0.0, "min_train_nodes": 1, "min_available_nodes": 1,
            "weighted_by_key": P.NUM_EXAMPLES, "arrayrecord_key": P.ARRAYS, "configrecord_key": P.CONFIG,
            "train_metrics_aggr_fn": _no_metrics}


def _no_metrics(records: list[RecordDict], weighting_key: str) -> MetricRecord:  # noqa: ARG001 - Flower's signature
    return MetricRecord()


@dataclass
class RoundInFlight:
    """What :meth:`QuantAwareMixin.configure_train` sent for the round now training."""

    server_round: int  # fedquant's round (Flower's round + round_offset)
    arrays: ArrayRecord
    config: ConfigRecord
    grid: object | None  # Flower's Grid; None when aggregate_train is called without one
    node_clients: dict[int, list[int]] = field(default_factory=dict)  # node id -> the clients sent to it


class QuantAwareMixin:
    """Mix in before a Flower strategy class (see :func:`strategies.build_strategy`)."""

    def __init__(self, *, plan: TrainingPlan, server_name: str, min_replies: int = 1, on_too_few: str = "retry",
                 max_retries: int = 3, client_work: list[int] | None = None, on_report: ReportSink | None = None,
                 **kwargs) -> None:
        flwr_logger = logging.getLogger("flwr")
        level = flwr_logger.level
        flwr_logger.setLevel(logging.ERROR)  # silence "fraction_evaluate is 0": the server evaluates
        try:
            super().__init__(**flower_settings(), **kwargs)
        finally:
            flwr_logger.setLevel(level)
        self.plan = plan
        self.server_name = server_name
        self.min_replies = min_replies
        self.on_too_few = on_too_few
        self.max_retries = max_retries
        self.client_work = client_work  # e.g. examples per client: the largest jobs are sent first
        self.on_report = on_report
        self.round_offset = 0
        self.node_of: dict[int, int] | None = None  # client partition -> node (deployment only)
        self.in_flight: RoundInFlight | None = None
        self._node_index: dict[int, int] = {}  # node id -> its index in the engine, from replies
        oscillation = plan.oscillation
        self.freeze = FreezeState(oscillation) if oscillation is not None and oscillation.freezing else None

    # -- resuming -----------------------------------------------------------------------------
    def resume_at(self, server_round: int, server_state: dict) -> None:
        """Continue after ``server_round`` with the optimizer state of :meth:`server_state`."""
        self.round_offset = server_round
        server_state = dict(server_state)
        freezing = server_state.pop("freezing", None)
        if self.freeze is not None and freezing is not None:
            self.freeze.load(freezing)
        import_server_state(self, server_state)

    def server_state(self) -> dict:
        """Flower's server-optimizer state (and the freezing state) as tensors, for a
        weights-only checkpoint."""
        state = export_server_state(self)
        if self.freeze is not None:
            state["freezing"] = self.freeze.to_dict()
        return state

    # -- sending ------------------------------------------------------------------------------
    def configure_train(self, server_round: int, arrays, config: ConfigRecord, grid) -> Iterable[Message]:
        # Flower samples every node (fraction 1.0 of clients_per_round nodes) and applies its own
        # per-strategy state/config; we choose the partitions with our seeded plan.
        self.in_flight = RoundInFlight(server_round + self.round_offset, arrays, config, grid)
        return self.node_messages(attempt=0)

    def dispatch_order(self, messages: list[Message], clients: list[int]) -> tuple[list[Message], list[int]]:
        """Nodes in the order the engine serves them, clients longest job first.

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

    def assign_nodes(self, node_of: dict[int, int]) -> None:
        """Deployment: client partition ``c`` lives on node ``node_of[c]`` (its own data), so its
        messages go there instead of being dealt out (see :func:`discover_partitions`)."""
        self.node_of = dict(node_of)

    def node_messages(self, attempt: int) -> list[Message]:
        """One training Message per sampled client for the round in flight (a fresh sample per
        retry). In simulation the clients are dealt out over the connected nodes in turn: with as
        many nodes as clients per round (fedquant's own simulation) each node trains one client;
        with fewer (e.g. ``flwr run``'s default federation) a node trains several, one after the
        other. In deployment (:meth:`assign_nodes`) each goes to the node that holds its data."""
        job = self.in_flight
        r = job.server_round
        flower_messages = list(super().configure_train(r, job.arrays, job.config, job.grid))
        nodes, clients = self.dispatch_order(flower_messages, self.plan.sample_clients(r, attempt))
        shared = nodes[0].content  # Flower's one record for every node: the arrays and train config
        job.node_clients = {}
        round_config = {P.LR: self.plan.lr_schedule(r)} if self.plan.lr_schedule else {}
        if self.plan.oscillation is not None:
            round_config |= {P.DAMPEN: self.plan.oscillation.dampen_at(r),
                             P.TRACK_BITS: self.plan.oscillation.ref_bits if self.freeze is not None else 0}
        frozen = ArrayRecord({k: m.to(torch.uint8) for k, m in self.freeze.frozen.items()}) \
            if self.freeze is not None and self.freeze.frozen else None
        out = []
        for i, client in enumerate(clients):
            node = self.node_of[client] if self.node_of else nodes[i % len(nodes)].metadata.dst_node_id
            sampling, settings = self.plan.assignment(r, client)
            node_config = ConfigRecord({
                **dict(shared.config_records[self.configrecord_key]), **round_config,
                P.PARTITION: client, P.SAMPLING: sampling, P.SETTINGS: settings, P.WIDTH: self.plan.width(client),
                P.SEED: self.plan.client_seed(r, client),
                P.INJECT_FAILURE: self.plan.injects_failure(r, client, attempt),
                P.INJECT_NAN: self.plan.injects_nan(r, client),
            })
            content = RecordDict({self.arrayrecord_key: shared.array_records[self.arrayrecord_key],
                                  self.configrecord_key: node_config})
            if frozen is not None:
                content[P.FROZEN] = frozen
            job.node_clients.setdefault(node, []).append(client)
            out.append(Message(content=content, message_type=MessageType.TRAIN, dst_node_id=node))
        return out

    # -- receiving ----------------------------------------------------------------------------
    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        r = server_round + self.round_offset
        if self.in_flight is None or self.in_flight.server_round != r:  # called without configure_train
            self.in_flight = RoundInFlight(r, ArrayRecord(), ConfigRecord(), None)
        report = RoundReport()
        good = self.retry_until_enough(self.successful_replies(replies, report), report)
        good.sort(key=lambda m: int(m.content.metric_records[P.METRICS][P.PARTITION]))
        oscillations = pop_oscillations(good)  # before Flower's check of one ArrayRecord per reply
        self.round_report(r, good, report)
        if self.plan.has_widths and good:
            self.fill_sub_models(good)
        arrays, _ = super().aggregate_train(r, good)
        if arrays is not None and self.freeze is not None:
            self.freeze_oscillating(arrays, *oscillations, report)
        # NaN/Inf in any reply's weights propagates into the (weighted) aggregate, so the replies
        # are only scanned, to name the clients, when the aggregate is not finite.
        if arrays is not None and not is_finite(arrays):
            stop_if_nonfinite(r, good, check_weights=True)
            raise DivergenceError(f"round {r}: the aggregated global model has NaN/Inf values "
                                  f"(strategy.server={self.server_name}); stopping")
        if self.on_report is not None:
            self.on_report(r, report)
        return arrays, MetricRecord({P.TRAIN_LOSS: report.loss, P.NUM_EXAMPLES: sum(c.num_examples for c in report.clients),
                                     P.BITS_HIST: P.encode_bits(report.bits_used)})

    def fill_sub_models(self, replies: list[Message]) -> None:
        """HeteroFL: expand every reply's sub-model arrays to the global shapes, filling the entries
        it does not hold with their mean over the clients that do (example-weighted), so that
        Flower's weighted average yields each entry's average over its holders (the global value
        where nobody holds it; :func:`fedquant.models.width.overlap_fill` proves the identity).
        For FedAvgM/FedAdam the untouched entries' pseudo-gradient is then 0, but their
        momentum from earlier rounds still moves them."""
        global_state = self.in_flight.arrays.to_torch_state_dict()
        states = [(m.content.array_records[self.arrayrecord_key].to_torch_state_dict(),
                   float(m.content.metric_records[P.METRICS][P.NUM_EXAMPLES])) for m in replies]
        for reply, filled in zip(replies, overlap_fill(global_state, states), strict=True):
            reply.content[self.arrayrecord_key] = ArrayRecord(filled)

    def freeze_oscillating(self, arrays: ArrayRecord, counts: dict[str, torch.Tensor],
                           integer_sums: dict[str, torch.Tensor], steps: int, report: RoundReport) -> None:
        """Update the freezing state with the round's pooled oscillation statistics and write the
        frozen values into ``arrays``, in place. (Flower's FedAvgM keeps ``arrays`` itself as its
        model; FedOpt starts every round from the global model it is sent: neither holds another
        copy to correct.)"""
        weights = {k: torch.from_numpy(arrays[k].numpy()) for k in counts}
        self.freeze.update(counts, integer_sums, steps, weights)
        current = {k: torch.from_numpy(arrays[k].numpy()) for k in self.freeze.frozen}
        arrays.update({k: Array(v.numpy()) for k, v in self.freeze.enforce(current).items()})
        frequency = self.freeze.frequency
        entries = sum(f.numel() for f in frequency.values())
        report.oscillation_rate = sum(float(f.sum()) for f in frequency.values()) / entries if entries and steps else None
        report.frozen_share = self.freeze.frozen_share()

    def successful_replies(self, replies: Iterable[Message], report: RoundReport) -> list[Message]:
        """The replies without an error; each failure is added to ``report`` by client id."""
        good = []
        for reply in replies:
            if not reply.has_error():
                good.append(reply)
                continue
            reason = failure_reason(reply.error.reason)
            if not reason.startswith("client "):  # the ClientApp names its client; a lost node cannot
                node = reply.metadata.src_node_id
                clients = self.in_flight.node_clients.get(node, [])
                who = f"client {clients[0]}" if len(clients) == 1 else \
                    f"node {node}" + (f" (clients {', '.join(map(str, clients))})" if clients else "")
                reason = f"{who}: {reason}"
            report.failures.append(reason)
        return good

    def retry_until_enough(self, good: list[Message], report: RoundReport) -> list[Message]:
        """Send the round again to fresh samples while fewer than ``min_replies`` succeeded."""
        job, attempt = self.in_flight, 0
        while len(good) < self.min_replies:
            summary = (f"round {job.server_round}: {len(good)} of {self.plan.clients_per_round} clients replied, "
                       f"fewer than strategy.min_replies={self.min_replies}")
            if self.on_too_few == "stop" or attempt >= self.max_retries or job.grid is None:
                reasons = "; ".join(report.failures[-self.plan.clients_per_round:])
                action = "stopping (strategy.on_too_few_replies=stop)" if self.on_too_few == "stop" \
                    else f"stopping after {attempt} retries (strategy.max_retries={self.max_retries})"
                raise TooFewReplies(f"{summary}; {action}. Failures: {reasons}")
            attempt += 1
            report.retries = attempt
            logging.getLogger("fedquant").warning("%s; retrying with a new sample (%d/%d)", summary, attempt, self.max_retries)
            good = self.successful_replies(job.grid.send_and_receive(self.node_messages(attempt)), report)
        return good

    def round_report(self, server_round: int, good: list[Message], report: RoundReport) -> None:
        """Add the successful replies to ``report`` (stopping on a non-finite loss) and learn
        each node's engine index for :meth:`dispatch_order`."""
        stop_if_nonfinite(server_round, good, check_weights=False)  # losses: scalars, cheap
        for reply in good:
            m = reply.content.metric_records[P.METRICS]
            index = int(m.get(P.NODE_INDEX, -1))
            if index >= 0:
                self._node_index[reply.metadata.src_node_id] = index
            client = int(m[P.PARTITION])
            report.clients.append(ClientReport(client, self.plan.profile_name(client), int(m[P.NUM_EXAMPLES]),
                                               float(m[P.TRAIN_LOSS]), P.decode_bits(m[P.BITS_HIST]),
                                               float(m[P.TRAIN_SECONDS]), float(m[P.TRAIN_CPU_SECONDS])))


def pop_oscillations(replies: list[Message]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], int]:
    """Remove each reply's oscillation record and return the counts and integer sums summed over
    the replies (by weight name) and the summed number of counted steps."""
    counts: dict[str, torch.Tensor] = {}
    sums: dict[str, torch.Tensor] = {}
    steps = 0
    for reply in replies:
        if P.OSCILLATIONS not in reply.content.array_records:
            continue
        record = reply.content.array_records[P.OSCILLATIONS]
        del reply.content[P.OSCILLATIONS]
        steps += int(reply.content.metric_records[P.METRICS][P.TRACKED_STEPS])
        for key, array in record.items():
            name, kind = key.rsplit("|", 1)
            target = counts if kind == "count" else sums
            value = torch.from_numpy(array.numpy()).double()
            target[name] = target[name] + value if name in target else value
    return counts, sums, steps
