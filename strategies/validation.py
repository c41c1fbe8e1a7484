"""Every training reply checked before the server reads it (:mod:`fedquant.federation.reply_check`
states what is checked): a malformed reply, from a simulated attacker or a real SuperNode, is
that client's failure with its reason, never a crash and never aggregated. A valid reply's
uplink bytes are counted and, with a compressed uplink, its arrays decoded into the client's
model (then checked finite again)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from flwr.app import ArrayRecord, Message

from fedquant.federation import protocol as P
from fedquant.federation.compression import Codec
from fedquant.federation.plan import TrainingPlan
from fedquant.federation.reply_check import (
    Layout,
    arrays_problem,
    encoded_layout,
    layout,
    metrics_problem,
    oscillations_problem,
)

from .links import Links, decode_reply, record_bytes
from .sending import RoundInFlight

REJECTED = "rejected reply"


@dataclass(frozen=True)
class Rejection:
    """A reply the server did not take: who sent it (``client <id>`` or ``node <id>``) and why."""

    who: str
    reason: str

    @property
    def non_finite(self) -> bool:
        """Rejected for NaN/Inf values alone (what a diverged client sends)."""
        return self.reason.startswith("non-finite")

    def __str__(self) -> str:
        return f"{self.who}: {REJECTED}: {self.reason}"


@dataclass
class ReplyCheck:
    """What a valid reply of the round in flight looks like (:meth:`accept` checks one)."""

    plan: TrainingPlan
    links: Links
    arrays_key: str
    partition_sizes: Sequence[int] | None = None  # examples per client partition, when the server knows them
    oscillations: bool = False  # weight freezing: replies may carry an oscillation record
    _layouts: dict = field(default_factory=dict)  # (round, width) -> (expected, bound, full)

    def __post_init__(self) -> None:
        if not self.links.uplink.codec.off and self.plan.has_widths and self.links.templates is None:
            raise ValueError("a compressed uplink with width profiles needs the sub-models' templates (Links.templates)")

    def accept(self, reply: Message, job: RoundInFlight, accepted: set[int]) -> Rejection | None:
        """None when ``reply`` is valid (then counted into ``job.uplink_bytes``, decoded, and its
        client added to ``accepted``); otherwise why not."""
        content, node = reply.content, reply.metadata.src_node_id
        sent_to = job.node_clients.get(node, [])
        who = f"client {sent_to[0]}" if len(sent_to) == 1 else f"node {node}"
        if set(content.metric_records) != {P.METRICS}:
            return Rejection(who, f"metric records {sorted(content.metric_records)}, where [{P.METRICS!r}] was expected")
        metrics = dict(content.metric_records[P.METRICS])
        client = metrics.get(P.PARTITION)
        if isinstance(client, int) and not isinstance(client, bool):
            who = f"client {client}"
            if job.node_clients and client not in sent_to:
                return Rejection(f"node {node}", f"it names client {client}, which it was not sent")
            if client in accepted:
                return Rejection(who, "a second reply for this client")
            if not 0 <= client < self.plan.num_clients:
                return Rejection(f"node {node}", f"it names client {client}, which is not a partition of this federation")
        size = self._size(client)
        if reason := metrics_problem(metrics, size):
            return Rejection(who, reason)
        records = set(content.array_records)
        allowed = {self.arrays_key, P.OSCILLATIONS} if self.oscillations else {self.arrays_key}
        if self.arrays_key not in records or not records <= allowed:
            return Rejection(who, f"array records {sorted(records)}, where {sorted(allowed)} were expected")
        expected, bound, full = self._layout(job, self.plan.width(client))
        try:
            arrays = {k: a.numpy() for k, a in content.array_records[self.arrays_key].items()}
            oscillations = {k: a.numpy() for k, a in content.array_records[P.OSCILLATIONS].items()} \
                if P.OSCILLATIONS in records else {}
        except Exception as err:  # noqa: BLE001 - whatever bytes a client sent
            return Rejection(who, f"unreadable array ({type(err).__name__}: {err})"[:300])
        if reason := arrays_problem(arrays, expected, bound) or oscillations_problem(oscillations, full):
            return Rejection(who, reason)
        job.uplink_bytes[client] = record_bytes(*content.array_records.values())
        record, order = content.array_records[self.arrays_key], list(expected or bound or ())
        if self.links.uplink.codec.off and list(record) != order and order:  # Krum, Bulyan, DP read arrays in order
            content[self.arrays_key] = ArrayRecord({k: record[k] for k in order})
        if not self.links.uplink.codec.off:
            try:
                decoded = decode_reply(record, job.received, self.plan.width(client), self.links)
                content[self.arrays_key] = ArrayRecord(decoded)
            except Exception as err:  # noqa: BLE001 - the layout was checked; anything left is the client's
                return Rejection(who, f"does not decode ({type(err).__name__}: {err})"[:300])
            if reason := arrays_problem({k: t.numpy() for k, t in decoded.items()}, None):
                return Rejection(who, f"{reason} after decoding")
        accepted.add(client)
        return None

    def _size(self, client) -> int | None:
        sizes = self.partition_sizes
        if sizes is None or not isinstance(client, int) or not 0 <= client < len(sizes):
            return None
        return int(sizes[client])

    def _layout(self, job: RoundInFlight, width: float) -> tuple[Layout | None, Layout | None, Layout | None]:
        """The reply layout a client of ``width`` must send (exact), or only the global layout its
        arrays must fit inside (a sub-model without a known template), and the global model's
        layout; all None when the round's model is not known (``aggregate_train`` called without
        ``configure_train``)."""
        key = (job.server_round, width)
        if key not in self._layouts:
            self._layouts = {k: v for k, v in self._layouts.items() if k[0] == job.server_round}
            full = layout(job.arrays) if len(job.arrays) else None
            plain, bound = full, None
            if full is not None and width < 1:
                templates = self.links.templates
                plain, bound = (layout(templates(width)), None) if templates is not None else \
                    (None, encoded_layout(full, Codec()))  # float32, as clients send it
            expected = encoded_layout(plain, self.links.uplink.codec) if plain is not None else None
            self._layouts[key] = (expected, bound, full)
        return self._layouts[key]

