"""Fault handling for a round's replies: failed clients named, non-finite values stop the run."""

from __future__ import annotations

import numpy as np
from flwr.app import Message

from fedquant.federation import protocol as P


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


def stop_if_nonfinite(server_round: int, replies: list[Message], check_weights: bool) -> None:
    """Raise :class:`DivergenceError` naming every client whose loss (or weights) is NaN/Inf."""
    bad = []
    for reply in replies:
        m = reply.content.metric_records[P.METRICS]
        what = []
        if not np.isfinite(float(m[P.TRAIN_LOSS])):
            what.append(f"loss {float(m[P.TRAIN_LOSS])}")
        if check_weights and not is_finite(reply.content.array_records[P.ARRAYS]):
            what.append("weights")
        if what:
            bad.append(f"client {int(m[P.PARTITION])} ({', '.join(what)})")
    if bad:
        raise DivergenceError(f"round {server_round}: non-finite values from {', '.join(bad)}; stopping, this round's "
                              "global model is discarded (lower client.lr, or check those clients' data)")


def stop_if_diverged(server_round: int, aggregate, replies: list[Message], server_name: str) -> None:
    """Raise :class:`DivergenceError` when the aggregated ``aggregate`` (an ArrayRecord or None)
    has NaN/Inf values. NaN/Inf in any reply's weights propagates into the (weighted) aggregate,
    so the replies are only scanned, to name the clients, when the aggregate is not finite."""
    if aggregate is None or is_finite(aggregate):
        return
    stop_if_nonfinite(server_round, replies, check_weights=True)
    raise DivergenceError(f"round {server_round}: the aggregated global model has NaN/Inf values "
                          f"(strategy.server={server_name}); stopping")
