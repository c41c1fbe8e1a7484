"""What the server makes of a round's replies: failures dropped and named, malformed replies
rejected (:mod:`strategies.validation`), the round retried while too few succeeded, and the
accepted replies turned into the round's report."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from flwr.app import Message, MetricRecord

from fedquant.federation import protocol as P
from fedquant.federation.plan import TrainingPlan
from fedquant.federation.reports import ClientReport, RoundReport

from .faults import TooFewReplies, failure_reason, stop_if_all_non_finite
from .sending import RoundInFlight
from .validation import ReplyCheck


@dataclass(frozen=True)
class RetryPolicy:
    """With fewer than ``min_replies`` successful replies, the round is sent again to a fresh
    sample (``on_too_few="retry"``, up to ``max_retries`` times) or the run stops (``"stop"``)."""

    min_replies: int = 1
    on_too_few: str = "retry"
    max_retries: int = 3


def successful_replies(replies: Iterable[Message], report: RoundReport, job: RoundInFlight,
                       check: ReplyCheck | None = None) -> list[Message]:
    """The replies without an error that pass ``check``; each failure or rejection is added to
    ``report`` by client id. Raises :class:`~strategies.faults.DivergenceError` when every reply
    was rejected for NaN/Inf alone."""
    good, accepted, answered, non_finite = [], set(), 0, []
    for reply in replies:
        if not reply.has_error():
            answered += 1
            rejection = check.accept(reply, job, accepted) if check is not None else None
            if rejection is None:
                good.append(reply)
                continue
            report.failures.append(str(rejection))
            if rejection.non_finite:
                non_finite.append(f"{rejection.who} ({rejection.reason})")
            continue
        reason = failure_reason(reply.error.reason)
        if not reason.startswith("client "):  # the ClientApp names its client; a lost node cannot
            node = reply.metadata.src_node_id
            clients = job.node_clients.get(node, [])
            who = f"client {clients[0]}" if len(clients) == 1 else \
                f"node {node}" + (f" (clients {', '.join(map(str, clients))})" if clients else "")
            reason = f"{who}: {reason}"
        report.failures.append(reason)
    stop_if_all_non_finite(job.server_round, answered, non_finite)
    return good


def retry_until_enough(good: list[Message], report: RoundReport, job: RoundInFlight, policy: RetryPolicy,
                       clients_per_round: int, resend: Callable[[int], Iterable[Message]]) -> list[Message]:
    """Send the round again (``resend(attempt)``: the accepted replies of a fresh sample) while
    fewer than ``policy.min_replies`` were accepted."""
    attempt = 0
    while len(good) < policy.min_replies:
        summary = (f"round {job.server_round}: {len(good)} of {clients_per_round} clients replied, "
                   f"fewer than strategy.min_replies={policy.min_replies}")
        if policy.on_too_few == "stop" or attempt >= policy.max_retries or job.grid is None:
            reasons = "; ".join(report.failures[-clients_per_round:])
            action = "stopping (strategy.on_too_few_replies=stop)" if policy.on_too_few == "stop" \
                else f"stopping after {attempt} retries (strategy.max_retries={policy.max_retries})"
            raise TooFewReplies(f"{summary}; {action}. Failures: {reasons}")
        attempt += 1
        report.retries = attempt
        logging.getLogger("fedquant").warning("%s; retrying with a new sample (%d/%d)", summary, attempt,
                                              policy.max_retries)
        good = list(resend(attempt))
    return good


def in_partition_order(replies: list[Message]) -> list[Message]:
    """The replies sorted by client partition, the order they are reported and aggregated in."""
    return sorted(replies, key=lambda m: int(m.content.metric_records[P.METRICS][P.PARTITION]))


def round_report(good: list[Message], report: RoundReport, plan: TrainingPlan, node_index: dict[int, int]) -> None:
    """Add the accepted replies to ``report`` and learn each node's engine index into
    ``node_index`` (for :func:`~strategies.sending.dispatch_order`)."""
    for reply in good:
        m = reply.content.metric_records[P.METRICS]
        index = int(m.get(P.NODE_INDEX, -1))
        if index >= 0:
            node_index[reply.metadata.src_node_id] = index
        client = int(m[P.PARTITION])
        report.clients.append(ClientReport(client, plan.profile_name(client), int(m[P.NUM_EXAMPLES]),
                                           float(m[P.TRAIN_LOSS]), P.decode_bits(m[P.BITS_HIST]),
                                           float(m[P.TRAIN_SECONDS]), float(m[P.TRAIN_CPU_SECONDS])))


def train_metrics(report: RoundReport) -> MetricRecord:
    """The round's train metrics for Flower, from its report (Flower's own averaging is skipped)."""
    return MetricRecord({P.TRAIN_LOSS: report.loss, P.NUM_EXAMPLES: sum(c.num_examples for c in report.clients),
                         P.BITS_HIST: P.encode_bits(report.bits_used)})
