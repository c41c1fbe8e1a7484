"""Who trains in a round, and at which bit-widths: seeded, stateless per round.

Every draw uses a generator seeded by (seed, round, ...) so any round can be replayed alone
(resumable) and Flower's own use of the global ``random`` module cannot disturb it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedquant.bitwidths import FLOAT, BitSampler, Setting, encode, parse_setting

STRATEGIES = ("fedavg", "qafedavg")


@dataclass(frozen=True)
class Profile:
    """A device class: its name, the share of clients that have it, the bit-widths it runs."""

    name: str
    share: float
    bits: tuple[int, ...]

    @property
    def settings(self) -> list[Setting]:
        return [parse_setting(b) for b in self.bits]


def assign_profiles(profiles: list[Profile], num_clients: int, seed: int) -> list[int]:
    """Profile index of every client: shares rounded by largest remainder, placed at random."""
    raw = np.array([p.share for p in profiles]) * num_clients
    counts = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - counts), kind="stable")[: num_clients - counts.sum()]:
        counts[i] += 1
    labels = np.repeat(np.arange(len(profiles)), counts)
    return np.random.default_rng([seed, 3]).permutation(labels).tolist()


@dataclass
class TrainingPlan:
    """The server's schedule: sampled clients per round and what each one trains at.

    ``fedavg`` trains in float. ``qafedavg`` trains at settings from ``bits`` (the set B),
    restricted per client to its device profile (B intersected with the profile's bits; float
    steps in B stay available to all), drawn per step (by the client, seeded), per round (here),
    or fixed (B has one element).
    """

    strategy: str
    sampling: str
    bits: list[Setting]
    num_clients: int
    clients_per_round: int
    seed: int
    profiles: list[Profile]
    failure_rate: float = 0.0  # simulation-only fault injection: share of sampled clients that raise
    nan_rate: float = 0.0  # simulation-only: share of sampled clients that reply with NaN weights

    def __post_init__(self) -> None:
        self.profile_of = assign_profiles(self.profiles, self.num_clients, self.seed) if self.profiles else None

    def allowed(self, client: int) -> list[Setting]:
        if self.strategy == "fedavg":
            return [FLOAT]
        if self.profile_of is None:
            return self.bits
        profile = self.profiles[self.profile_of[client]].settings
        return [s for s in self.bits if s in profile or s == FLOAT]

    def profile_name(self, client: int) -> str | None:
        return None if self.profile_of is None else self.profiles[self.profile_of[client]].name

    def sample_clients(self, server_round: int, attempt: int = 0) -> list[int]:
        """``clients_per_round`` distinct client ids, sorted (a fresh draw for each retry)."""
        rng = np.random.default_rng([self.seed, 4, server_round] + ([attempt] if attempt else []))
        return sorted(rng.choice(self.num_clients, self.clients_per_round, replace=False).tolist())

    def injects_failure(self, server_round: int, client: int, attempt: int = 0) -> bool:
        if self.failure_rate <= 0:
            return False
        return bool(np.random.default_rng([self.seed, 8, server_round, client, attempt]).random() < self.failure_rate)

    def injects_nan(self, server_round: int, client: int) -> bool:
        if self.nan_rate <= 0:
            return False
        return bool(np.random.default_rng([self.seed, 9, server_round, client]).random() < self.nan_rate)

    def client_seed(self, server_round: int, client: int) -> int:
        return int(np.random.default_rng([self.seed, 5, server_round, client]).integers(2**31))

    def assignment(self, server_round: int, client: int) -> tuple[str, list[str]]:
        """(sampling mode, settings) that travel to the client in its ConfigRecord."""
        allowed = self.allowed(client)
        if self.strategy == "fedavg" or len(allowed) == 1:
            return "fixed", encode(allowed[:1])
        if self.sampling == "per_round":
            return "fixed", encode([BitSampler(allowed, [self.seed, 6, server_round, client])()])
        return self.sampling, encode(allowed)
