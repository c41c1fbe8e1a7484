"""Fault handling for a round's replies: failed clients named; a diverged federation (every reply
non-finite) or a non-finite aggregate stops the run."""

from __future__ import annotations

import numpy as np


class TooFewReplies(RuntimeError):
    """A round ended with fewer successful replies than ``min_replies``."""


class DivergenceError(RuntimeError):
    """Non-finite values reached the server."""


def failure_reason(text: str) -> str:
    """The client's own exception message out of Flower's error reason (which wraps it as
    "... Exception ClientAppException occurred. Message: <message>'>")."""
    text = str(text).strip()
    if "Message: " in text:
        text = text.rsplit("Message: ", 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (lines[-1] if lines else "unknown error").removesuffix("'>").strip()[:300]


def is_finite(arrays) -> bool:
    """Every value of an ArrayRecord is finite."""
    return all(np.isfinite(a.numpy()).all() for a in arrays.values())


def stop_if_all_non_finite(server_round: int, answered: int, non_finite: list[str]) -> None:
    """Raise :class:`DivergenceError` when every one of the ``answered`` clients that replied sent
    NaN/Inf (``non_finite``: each named with what): the federation diverged, not one client. (One
    client's non-finite reply among finite ones is that client's rejected reply.)"""
    if answered and len(non_finite) == answered:
        raise DivergenceError(f"round {server_round}: non-finite values from every client that replied: "
                              f"{'; '.join(non_finite)}; stopping, this round's global model is discarded "
                              "(lower client.lr, or check those clients' data)")


def stop_if_diverged(server_round: int, aggregate, server_name: str) -> None:
    """Raise :class:`DivergenceError` when the aggregated ``aggregate`` (an ArrayRecord or None)
    has NaN/Inf values. Every aggregated reply was finite (non-finite replies are rejected), so
    this is the server's own step overflowing (e.g. a scaled update under a server optimizer)."""
    if aggregate is None or is_finite(aggregate):
        return
    raise DivergenceError(f"round {server_round}: the aggregated global model has NaN/Inf values "
                          f"(strategy.server={server_name}); stopping, this round's global model is discarded")
