"""Quantization-aware bit-width assignment layered on any Flower Message-API strategy.

``build_strategy("fedadam", plan)`` returns an instance of ``QuantAware(FedAdam)``: Flower's own
``configure_train``/``aggregate_train`` run unchanged (FedProx still injects ``proximal-mu``,
FedOpt still tracks its moments); the mixin's overrides only add small steps around them, each
done in a module of its own:

- sending (:mod:`strategies.sending`): :meth:`~QuantAwareMixin.node_messages` makes Flower's one
  shared training record into one Message per sampled client, carrying its partition,
  bit-widths, seed and the round's learning rate, dealt out over the connected nodes (in
  deployment: sent to the node holding it);
- replies (:mod:`strategies.replies`): failed replies are dropped and named; every other reply
  is checked (:mod:`strategies.validation`: the arrays sent, their shapes and dtypes, finite
  values, an honest metric record) and a malformed one is rejected as that client's failure,
  with its reason; with fewer than ``min_replies`` accepted (at least what the aggregator's rule
  needs, :func:`fedquant.federation.aggregators.min_replies`) the round is retried with a fresh
  sample (``on_too_few="retry"``, up to ``max_retries``) or the run stops; the replies, in
  partition order, become a :class:`RoundReport` handed to ``on_report``; NaN/Inf from every
  client of a round, or in the aggregate, stops the run (:class:`DivergenceError`,
  :mod:`strategies.faults`) and that round's global model is discarded;
- sub-models (:mod:`strategies.sub_models`): with width profiles (HeteroFL) the replies'
  sub-models are expanded so that Flower's average becomes each entry's average over the
  clients holding it;
- privacy (:mod:`strategies.privacy`): with ``dp``, Flower's server-side DP wrapper runs around
  Flower's own aggregation step (clipping the checked, decoded, full-shape replies, noising the
  aggregate), seeded per round;
- oscillations (:mod:`strategies.oscillation`): with ``client.freeze_threshold``, pool the
  clients' oscillation counts, freeze the weights that oscillate too often and keep them frozen
  in the aggregate (:mod:`fedquant.federation.freezing` states the design);
- progress (:mod:`strategies.reply_progress`): with ``on_replies``, each round's replies are
  counted as the server pulls them and reported as ``on_replies(round, done, sent)``;
- resuming (:mod:`strategies.server_state`): :meth:`~QuantAwareMixin.resume_at` starts at a
  later round with restored server-optimizer (and freezing) state, which is what makes
  checkpoint/resume exact.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fedquant.federation import protocol as P
from fedquant.federation.freezing import FreezeState
from fedquant.federation.plan import TrainingPlan
from fedquant.federation.reports import RoundReport

from .faults import stop_if_diverged
from .links import Links
from .oscillation import freeze_oscillating, pop_oscillations
from .privacy import FlowerSteps, Privacy
from .replies import (
    RetryPolicy,
    in_partition_order,
    retry_until_enough,
    round_report,
    successful_replies,
    train_metrics,
)
from .reply_progress import CountingGrid
from .sending import RoundInFlight, client_messages, dispatch_order, shared_record
from .server_state import check_server_state, export_server_state, import_server_state
from .sub_models import fill_sub_models
from .validation import ReplyCheck

ReportSink = Callable[[int, RoundReport], None]
ProgressSink = Callable[[int, int, int], None]  # on_replies(round, done, sent)


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


class QuantAwareMixin:
    """Mix in before a Flower strategy class (see :func:`strategies.build_strategy`)."""

    def __init__(self, *, plan: TrainingPlan, server_name: str, min_replies: int = 1, on_too_few: str = "retry",
                 max_retries: int = 3, client_work: list[int] | None = None, on_report: ReportSink | None = None,
                 on_replies: ProgressSink | None = None, links: Links | None = None,
                 partition_sizes: list[int] | None = None, dp: str = "none", dp_options: dict | None = None,
                 **kwargs) -> None:
        flwr_logger = logging.getLogger("flwr")
        level = flwr_logger.level
        flwr_logger.setLevel(logging.ERROR)  # silence "fraction_evaluate is 0": the server evaluates
        try:
            super().__init__(**flower_settings(), **kwargs)
        finally:
            flwr_logger.setLevel(level)
        check_server_state(self)  # Flower keeps its optimizer state where strategies/server_state.py reads it
        self.plan = plan
        self.server_name = server_name
        self.retry = RetryPolicy(min_replies, on_too_few, max_retries)
        self.client_work = client_work  # e.g. examples per client: the largest jobs are sent first
        self.on_report = on_report
        self.on_replies = on_replies
        self.links = links or Links()
        self.round_offset = 0
        self.node_of: dict[int, int] | None = None  # client partition -> node (deployment only)
        self.in_flight: RoundInFlight | None = None
        self._node_index: dict[int, int] = {}  # node id -> its index in the engine, from replies
        oscillation = plan.oscillation
        self.freeze = FreezeState(oscillation) if oscillation is not None and oscillation.freezing else None
        self.check = ReplyCheck(plan, self.links, self.arrayrecord_key, partition_sizes, self.freeze is not None)
        self.flower: FlowerSteps | Privacy = FlowerSteps(super())  # Flower's own configure/aggregate_train
        if dp != "none":
            self.flower = Privacy(dp, dp_options or {}, self.flower, plan.clients_per_round, plan.seed)

    # -- resuming -----------------------------------------------------------------------------
    def resume_at(self, server_round: int, server_state: dict) -> None:
        """Continue after ``server_round`` with the optimizer state of :meth:`server_state`."""
        self.round_offset = server_round
        server_state = dict(server_state)
        freezing = server_state.pop("freezing", None)
        if self.freeze is not None and freezing is not None:
            self.freeze.load(freezing)
        privacy = server_state.pop("dp", None)
        if isinstance(self.flower, Privacy) and privacy is not None:
            self.flower.load(privacy)
        import_server_state(self, server_state)

    def server_state(self) -> dict:
        """Flower's server-optimizer state (and the freezing and adaptive-clipping state) as
        tensors, for a weights-only checkpoint."""
        state = export_server_state(self)
        if self.freeze is not None:
            state["freezing"] = self.freeze.to_dict()
        if isinstance(self.flower, Privacy) and (privacy := self.flower.state()):
            state["dp"] = privacy
        return state

    def assign_nodes(self, node_of: dict[int, int]) -> None:
        """Deployment: client partition ``c`` lives on node ``node_of[c]`` (its own data), so its
        messages go there instead of being dealt out (see :func:`discover_partitions`)."""
        self.node_of = dict(node_of)

    # -- the loop -----------------------------------------------------------------------------
    def start(self, grid, *args, **kwargs):
        """Flower's strategy loop; with ``on_replies`` on a grid that counts each round's replies
        as they are pulled (:class:`~strategies.reply_progress.CountingGrid`)."""
        if self.on_replies is not None:
            grid = CountingGrid(grid, self._replies_pulled)
        return super().start(grid, *args, **kwargs)

    def _replies_pulled(self, done: int, sent: int) -> None:
        if self.in_flight is not None:  # configure_train ran: the round is known
            self.on_replies(self.in_flight.server_round, done, sent)

    # -- sending ------------------------------------------------------------------------------
    def configure_train(self, server_round: int, arrays, config: ConfigRecord, grid) -> Iterable[Message]:
        # Flower samples every node (fraction 1.0 of clients_per_round nodes) and applies its own
        # per-strategy state/config; we choose the partitions with our seeded plan.
        self.in_flight = RoundInFlight(server_round + self.round_offset, arrays, config, grid)
        return self.node_messages(attempt=0)

    def node_messages(self, attempt: int) -> list[Message]:
        """One training Message per sampled client for the round in flight (a fresh sample per
        retry), built from Flower's own messages (:func:`~strategies.sending.client_messages`)."""
        job = self.in_flight
        flower_messages = list(self.flower.configure_train(job.server_round, job.arrays, job.config, job.grid))
        shared = shared_record(flower_messages, type(self).__name__)
        messages, clients = dispatch_order(flower_messages, self.plan.sample_clients(job.server_round, attempt),
                                           self._node_index, self.client_work)
        return client_messages(job, self.plan, shared, [m.metadata.dst_node_id for m in messages], clients, attempt,
                               node_of=self.node_of, freeze=self.freeze, arrays_key=self.arrayrecord_key,
                               config_key=self.configrecord_key, links=self.links)

    # -- receiving ----------------------------------------------------------------------------
    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        r = server_round + self.round_offset
        if self.in_flight is None or self.in_flight.server_round != r:  # called without configure_train
            self.in_flight = RoundInFlight(r, ArrayRecord(), ConfigRecord(), None)
        report = RoundReport()
        good = self.enough_replies(replies, report)  # checked, counted and decoded
        job = self.in_flight
        oscillations = pop_oscillations(good)  # before Flower's check of one ArrayRecord per reply
        round_report(good, report, self.plan, self._node_index)
        for c in report.clients:
            c.uplink_bytes, c.downlink_bytes = job.uplink_bytes[c.partition], job.downlink_bytes.get(c.partition, 0)
        if self.plan.has_widths and good:
            fill_sub_models(good, self.in_flight.arrays, self.arrayrecord_key)
        arrays, _ = self.flower.aggregate_train(r, good)
        if arrays is not None and self.freeze is not None:
            freeze_oscillating(self.freeze, arrays, *oscillations, report)
        stop_if_diverged(r, arrays, self.server_name)
        if self.on_report is not None:
            self.on_report(r, report)
        return arrays, train_metrics(report)

    def enough_replies(self, replies: Iterable[Message], report: RoundReport) -> list[Message]:
        """The round's accepted replies in partition order, the round sent again to fresh
        samples while fewer than ``min_replies`` were accepted (failures and rejected replies go
        to ``report``)."""
        job = self.in_flight

        def resend(attempt: int) -> list[Message]:
            return successful_replies(job.grid.send_and_receive(self.node_messages(attempt)), report, job, self.check)

        good = retry_until_enough(successful_replies(replies, report, job, self.check), report, job, self.retry,
                                  self.plan.clients_per_round, resend)
        return in_partition_order(good)
