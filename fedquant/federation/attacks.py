"""Hostile clients (simulation only, ``faults.attack``): which sampled clients attack, seeded
like every other fault, and what an attacker sends instead of its honest reply.

With ``w`` the model the client received (cut to its width for a sub-model client) and ``w_k``
the model it trained, an attacker sends:

- ``sign_flip``: ``w - (w_k - w)``, i.e. ``2w - w_k``: its update negated;
- ``scale``: ``w + s (w_k - w)`` with ``s = faults.attack_scale`` (boosting, ``s > 1``);
- ``noise``: ``w_k + e``, ``e ~ N(0, sigma^2)`` per entry, ``sigma = faults.attack_std``, drawn
  from a generator seeded by the client's round seed;
- ``malformed``: a reply that breaks the protocol in one of :data:`MALFORMATIONS`, drawn per
  (round, client): an array missing, an extra array, a wrong shape, a wrong dtype, a NaN, or a
  metric record that lies about its example count (negative, or :data:`INFLATE` times the truth).

The first three change the model before the uplink encodes it (the attacker speaks the protocol:
robust aggregators are what limits them); a malformation changes the message as sent, which the
server's reply check rejects (``strategies/validation.py``). The server picks the attackers
(``stream_rng(seed, Stream.ATTACK, round, client)``, like ``faults.nan_client_rate``) and tells
only them, in their message (:func:`attack_record`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from ..streams import Stream, stream_rng
from . import protocol as P

ATTACKS = ("none", "sign_flip", "scale", "noise", "malformed")
MALFORMATIONS = ("missing_array", "extra_array", "wrong_shape", "wrong_dtype", "non_finite", "negative_examples",
                 "inflated_examples")
INFLATE = 1000  # inflated_examples: the example count claimed, as a multiple of the true one
NOISE_SEED = 104729  # the noise attack's generator: the client's round seed plus this


@dataclass(frozen=True)
class Attack:
    """What one attacker does in one round."""

    kind: str  # one of ATTACKS except none
    scale: float = 1.0  # scale: s
    std: float = 0.0  # noise: sigma
    malformation: str = ""  # malformed: one of MALFORMATIONS


@dataclass(frozen=True)
class AttackPlan:
    """The ``faults.attack*`` keys: the share ``rate`` of sampled clients that attack each round."""

    kind: str = "none"
    rate: float = 0.0
    scale: float = 10.0
    std: float = 1.0

    def attack(self, seed: int, server_round: int, client: int) -> Attack | None:
        """The attack ``client`` makes in ``server_round`` (None: it is honest)."""
        if self.kind == "none" or self.rate <= 0:
            return None
        if stream_rng(seed, Stream.ATTACK, server_round, client).random() >= self.rate:
            return None
        malformation = ""
        if self.kind == "malformed":
            rng = stream_rng(seed, Stream.MALFORMATION, server_round, client)
            malformation = MALFORMATIONS[int(rng.integers(len(MALFORMATIONS)))]
        return Attack(self.kind, float(self.scale), float(self.std), malformation)


def attack_record(attack: Attack | None) -> dict:
    """The train-config entries that tell a client to attack (none for an honest client)."""
    if attack is None:
        return {}
    return {P.ATTACK: attack.kind, P.ATTACK_SCALE: attack.scale, P.ATTACK_STD: attack.std,
            P.MALFORMATION: attack.malformation}


def attack_from_record(cfg: Mapping) -> Attack | None:
    """Inverse of :func:`attack_record`."""
    if P.ATTACK not in cfg:
        return None
    return Attack(str(cfg[P.ATTACK]), float(cfg[P.ATTACK_SCALE]), float(cfg[P.ATTACK_STD]), str(cfg[P.MALFORMATION]))


def attacked_model(trained: Mapping[str, torch.Tensor], received: Mapping[str, torch.Tensor], attack: Attack,
                   seed: int) -> dict[str, torch.Tensor]:
    """What an attacker sends for its ``trained`` model (the module's equations); a malformation
    leaves the model as trained (:func:`malform` breaks the message instead)."""
    if attack.kind == "sign_flip":
        return {k: received[k] - (v - received[k]) for k, v in trained.items()}
    if attack.kind == "scale":
        return {k: received[k] + attack.scale * (v - received[k]) for k, v in trained.items()}
    if attack.kind == "noise":
        generator = torch.Generator().manual_seed(seed + NOISE_SEED)
        return {k: v + attack.std * torch.randn(v.shape, generator=generator, dtype=v.dtype) for k, v in trained.items()}
    return dict(trained)


def malform(arrays: Mapping[str, torch.Tensor], metrics: Mapping, malformation: str
            ) -> tuple[dict[str, torch.Tensor], dict]:
    """The reply's arrays and metrics with ``malformation`` applied (to the first array, or the
    first floating one for a NaN)."""
    arrays, metrics = dict(arrays), dict(metrics)
    first = next(iter(arrays))
    if malformation == "missing_array":
        del arrays[first]
    elif malformation == "extra_array":
        arrays[first + ".extra"] = torch.zeros(1)
    elif malformation == "wrong_shape":
        arrays[first] = arrays[first].reshape(-1)[:-1]
    elif malformation == "wrong_dtype":
        a = arrays[first]
        arrays[first] = a.to(torch.float32 if a.dtype == torch.float64 else torch.float64)
    elif malformation == "non_finite":
        name = next(k for k, v in arrays.items() if v.is_floating_point())
        arrays[name] = arrays[name].clone()
        arrays[name].view(-1)[0] = float("nan")
    elif malformation == "negative_examples":
        metrics[P.NUM_EXAMPLES] = -int(metrics[P.NUM_EXAMPLES])
    elif malformation == "inflated_examples":
        metrics[P.NUM_EXAMPLES] = int(metrics[P.NUM_EXAMPLES]) * INFLATE
    else:
        raise ValueError(f"unknown malformation {malformation!r}: allowed are {', '.join(MALFORMATIONS)}")
    return arrays, metrics
