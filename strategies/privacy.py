"""Central differential privacy (``strategy.dp``): Flower's own server-side DP wrappers, placed
around Flower's aggregation step inside the mixin rather than around the mixin.

Why not wrap the mixin (``DifferentialPrivacyServerSideFixedClipping(QuantAware(FedAvg)(...))``):
the wrapper's ``aggregate_train`` clips every ArrayRecord of every reply against the global
arrays *before* the mixin sees the replies, i.e. before the replies are checked
(a malformed reply would crash the clipping), decoded (a compressed reply's arrays are packed
integers, not weights), rid of their oscillation record (which would be "clipped" as if it were
the model) and expanded to full shapes (a sub-model's arrays do not match the global ones); it
drops the whole round when any reply failed (``validate_replies``), so the mixin's retries and
round report never run; it adds its noise after the mixin's frozen weights were enforced; and the
run's own calls (``resume_at``, ``server_state``, ``assign_nodes``, the reply counting of
``start``) do not reach through it.

So the wrapper wraps :class:`FlowerSteps`, Flower's own ``configure_train``/``aggregate_train`` of
the class the mixin is mixed into: the mixin hands it the checked, decoded, full-shape replies,
Flower's code clips each update ``x_i - w`` to norm ``C`` (``x_i <- w + (x_i - w) min(1, C /
||x_i - w||)``), aggregates and adds ``N(0, (sigma C / m)^2)`` to every entry of the aggregate
(``m = clients_per_round``), and the mixin then freezes, checks and reports as usual. Flower's
clipping scales each update array in place, which misses 0-dimensional arrays (``np.subtract`` of
two 0-d arrays is a numpy scalar, and ``*=`` rebinds it): the model's scalar entries (activation
quantizer ranges) would pass unclipped, so they travel through the wrapper as 1-element arrays
(:func:`lift`) and are turned back after (:func:`lower`). Flower draws
the noise from numpy's global generator; it is seeded per round here
(``Stream.DP_NOISE``), so runs are reproducible and a resume is exact (adaptive clipping's norm
is checkpointed with the server state).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator, Mapping

import numpy as np
import torch
from flwr.app import Array, ArrayRecord
from flwr.serverapp.strategy import (
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
)

from fedquant.federation.protocol import ARRAYS
from fedquant.streams import Stream, stream_rng

from .flower_compat import flower_mismatch

WRAPPERS = {"server_fixed": DifferentialPrivacyServerSideFixedClipping,
            "server_adaptive": DifferentialPrivacyServerSideAdaptiveClipping}
SET_BY_FEDQUANT = ("self", "strategy", "num_sampled_clients", "accountant")  # the plan's; an object


def dp_options() -> dict[str, list[str]]:
    """For each ``strategy.dp`` mode, the wrapper's constructor arguments ``strategy.dp_options`` may set."""
    return {mode: [p for p in inspect.signature(cls.__init__).parameters if p not in SET_BY_FEDQUANT]
            for mode, cls in WRAPPERS.items()}


class FlowerSteps:
    """Flower's own training steps of the strategy class the mixin is mixed into (``base``: the
    mixin's ``super()``): what a DP wrapper wraps."""

    def __init__(self, base) -> None:
        self.base = base

    def configure_train(self, server_round: int, arrays, config, grid):
        return self.base.configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies):
        return self.base.aggregate_train(server_round, replies)

    def summary(self) -> None:  # the wrapper's summary() calls it; the mixin logs Flower's own
        pass


@contextlib.contextmanager
def numpy_seeded(seed: int, server_round: int) -> Iterator[None]:
    """numpy's global generator seeded from ``(seed, DP_NOISE, round)`` inside, restored after."""
    saved = np.random.get_state()  # noqa: NPY002 - Flower's DP draws from numpy's global generator
    np.random.seed(int(stream_rng(seed, Stream.DP_NOISE, server_round).integers(2**32)))  # noqa: NPY002
    try:
        yield
    finally:
        np.random.set_state(saved)  # noqa: NPY002


def lift(record: ArrayRecord) -> ArrayRecord:
    """``record`` with every 0-dimensional array as a 1-element array (which Flower's clipping scales)."""
    return ArrayRecord({k: Array(a.numpy().reshape(1)) if len(a.shape) == 0 else a for k, a in record.items()})


def lower(record: ArrayRecord, scalars: set[str]) -> ArrayRecord:
    """Inverse of :func:`lift` for the names in ``scalars``."""
    return ArrayRecord({k: Array(a.numpy().reshape(())) if k in scalars else a for k, a in record.items()})


class Privacy:
    """A Flower server-side DP wrapper around ``steps``, seeded per round."""

    def __init__(self, mode: str, options: Mapping, steps: FlowerSteps, num_sampled_clients: int, seed: int) -> None:
        self.wrapper = WRAPPERS[mode](strategy=steps, num_sampled_clients=num_sampled_clients, **options)
        for name in ("current_arrays", "clipping_norm"):  # what fedquant sets and checkpoints
            if not hasattr(self.wrapper, name):
                raise flower_mismatch(f"flwr's {type(self.wrapper).__name__} has no attribute {name!r}, which "
                                      "strategies/privacy.py sets or checkpoints")
        self.seed = seed
        self.scalars: set[str] = set()  # the model's 0-d entries, lifted through the wrapper

    def configure_train(self, server_round: int, arrays: ArrayRecord, config, grid):
        messages = self.wrapper.configure_train(server_round, arrays, config, grid)  # the clients get ``arrays``
        self.wrapper.current_arrays = lift(arrays)  # what the updates are clipped against
        self.scalars = {k for k, a in arrays.items() if len(a.shape) == 0}
        return messages

    def aggregate_train(self, server_round: int, replies):
        replies = list(replies)
        for reply in replies:
            reply.content[ARRAYS] = lift(reply.content.array_records[ARRAYS])
        with numpy_seeded(self.seed, server_round):
            arrays, metrics = self.wrapper.aggregate_train(server_round, replies)
        return (lower(arrays, self.scalars) if arrays is not None else None), metrics

    def state(self) -> dict[str, torch.Tensor]:
        """What changes over rounds: adaptive clipping's norm (nothing for fixed clipping)."""
        if isinstance(self.wrapper, DifferentialPrivacyServerSideAdaptiveClipping):
            return {"clipping_norm": torch.tensor(float(self.wrapper.clipping_norm), dtype=torch.float64)}
        return {}

    def load(self, state: Mapping[str, torch.Tensor]) -> None:
        if "clipping_norm" in state:
            self.wrapper.clipping_norm = float(state["clipping_norm"])
