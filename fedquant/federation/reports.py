"""What the server learns from a round's training replies, as plain data (checkpointed, reported)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


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
    uplink_bytes: int = 0  # every array of its reply, as received (fedquant.federation.compression)
    downlink_bytes: int = 0  # every array of the message it was sent


@dataclass
class RoundReport:
    """A round's successful client replies (in partition order), its failures and retries."""

    clients: list[ClientReport] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # "client <id>: <reason>"
    retries: int = 0
    oscillation_rate: float | None = None  # with weight freezing: mean pooled oscillation frequency EMA
    frozen_share: float | None = None  # with weight freezing: share of tracked weight entries frozen

    @property
    def loss(self) -> float | None:
        """Example-weighted mean of the clients' train losses (None without replies)."""
        n = sum(c.num_examples for c in self.clients)
        return sum(c.loss * c.num_examples for c in self.clients) / n if n else None

    @property
    def bits_used(self) -> dict[str, int]:
        """Local steps per setting, summed over the clients."""
        bits: dict[str, int] = {}
        for c in self.clients:
            for k, v in c.bits_used.items():
                bits[k] = bits.get(k, 0) + v
        return dict(sorted(bits.items()))

    @property
    def uplink_bytes(self) -> int:
        """The payload the round's successful clients sent (failed replies are not counted)."""
        return sum(c.uplink_bytes for c in self.clients)

    @property
    def downlink_bytes(self) -> int:
        """The payload sent to the round's successful clients."""
        return sum(c.downlink_bytes for c in self.clients)

    def summary(self) -> dict:
        """The round's train entry in results.json."""
        return {"loss": self.loss, "bits_used": self.bits_used, "failures": len(self.failures),
                "uplink_bytes": self.uplink_bytes, "downlink_bytes": self.downlink_bytes,
                "failure_reasons": self.failures, "retries": self.retries,
                "clients": [vars(c) for c in self.clients]} \
            | ({"oscillation_rate": self.oscillation_rate, "frozen_share": self.frozen_share}
               if self.frozen_share is not None else {})

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> RoundReport:
        return cls([ClientReport(**c) for c in d["clients"]], list(d["failures"]), int(d.get("retries", 0)),
                   d.get("oscillation_rate"), d.get("frozen_share"))
