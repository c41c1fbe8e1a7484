"""Who trains in a round, and at which bit-widths: seeded, stateless per round.

Every draw uses a generator seeded by (seed, round, ...) so any round can be replayed alone
(resumable) and Flower's own use of the global ``random`` module cannot disturb it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..quant.scheme import Scheme
from ..streams import Stream, stream_rng
from .attacks import Attack, AttackPlan
from .bitwidths import FLOAT, BitSampler, Setting, encode
from .freezing import OscillationPlan
from .profiles import Profile, assign_profiles
from .schedule import BitSchedule, LRSchedule, precision

STRATEGIES = ("fedavg", "qafedavg")  # float training (+ post-training quantization) or QAT
ON_TOO_FEW = ("retry", "stop")  # what the server does with a round that has too few replies


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
    attacks: AttackPlan | None = None  # simulation-only: hostile clients (faults.attack; None: none)
    lr_schedule: LRSchedule | None = None  # the client learning rate per round (None: the config's)
    bit_schedule: BitSchedule | None = None  # warm-start recipes: float rounds first, lowest bits later
    oscillation: OscillationPlan | None = None  # oscillation dampening / weight freezing (None: off)
    scheme: Scheme = field(default_factory=Scheme)  # the run's quantizer scheme (quantization section)

    def __post_init__(self) -> None:
        self.profile_of = assign_profiles(self.profiles, self.num_clients, self.seed) if self.profiles else None

    def allowed(self, client: int, server_round: int) -> list[Setting]:
        """The settings ``client`` may train at in ``server_round``: B (or the round's ``B_r``,
        :class:`~fedquant.federation.schedule.BitSchedule`) intersected with its profile's bits;
        a profile none of whose bits ``B_r`` admits yet trains at its highest setting in B."""
        if self.strategy == "fedavg":
            return [FLOAT]
        bits = self.bit_schedule.at(server_round, self.bits) if self.bit_schedule else self.bits
        if self.profile_of is None:
            return bits
        profile = self.profiles[self.profile_of[client]].settings
        own = [s for s in bits if s in profile or s == FLOAT]
        if own:
            return own
        return [max((s for s in self.bits if s in profile), key=precision)]

    def scheme_of(self, client: int) -> Scheme:
        """The quantizer scheme client ``client`` trains with: its profile's, else the run's."""
        own = None if self.profile_of is None else self.profiles[self.profile_of[client]].scheme
        return own or self.scheme

    def width(self, client: int) -> float:
        """The width of the sub-model client ``client`` trains (its profile's; 1: the full model)."""
        return 1.0 if self.profile_of is None else self.profiles[self.profile_of[client]].width

    @property
    def has_widths(self) -> bool:
        return any(p.width < 1 for p in self.profiles)

    def profile_name(self, client: int) -> str | None:
        return None if self.profile_of is None else self.profiles[self.profile_of[client]].name

    def sample_clients(self, server_round: int, attempt: int = 0) -> list[int]:
        """``clients_per_round`` distinct client ids, sorted (a fresh draw for each retry)."""
        rng = stream_rng(self.seed, Stream.CLIENTS, server_round, *([attempt] if attempt else []))
        return sorted(rng.choice(self.num_clients, self.clients_per_round, replace=False).tolist())

    def injects_failure(self, server_round: int, client: int, attempt: int = 0) -> bool:
        if self.failure_rate <= 0:
            return False
        return bool(stream_rng(self.seed, Stream.FAILURE, server_round, client, attempt).random() < self.failure_rate)

    def injects_nan(self, server_round: int, client: int) -> bool:
        if self.nan_rate <= 0:
            return False
        return bool(stream_rng(self.seed, Stream.NAN, server_round, client).random() < self.nan_rate)

    def attack(self, server_round: int, client: int) -> Attack | None:
        """The attack ``client`` makes in ``server_round`` (None: honest; the same in a retry)."""
        return None if self.attacks is None else self.attacks.attack(self.seed, server_round, client)

    def client_seed(self, server_round: int, client: int) -> int:
        return int(stream_rng(self.seed, Stream.CLIENT_SEED, server_round, client).integers(2**31))

    def assignment(self, server_round: int, client: int) -> tuple[str, list[str]]:
        """(sampling mode, settings) that travel to the client in its ConfigRecord."""
        allowed = self.allowed(client, server_round)
        if self.strategy == "fedavg" or len(allowed) == 1:
            return "fixed", encode(allowed[:1])
        if self.sampling == "per_round":
            return "fixed", encode([BitSampler(allowed, stream_rng(self.seed, Stream.ROUND_SETTING, server_round, client))()])
        return self.sampling, encode(allowed)
