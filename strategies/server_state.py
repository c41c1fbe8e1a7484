"""The one adapter to Flower's server-optimizer state (FedAvgM's momentum, FedOpt's moments): as
tensors and back, so a weights-only checkpoint can hold it and a resume continues exactly.

Flower keeps this state in plain instance attributes, not a public API, so the attributes each
supported class keeps are declared here (:data:`SERVER_STATE`, read from flwr 1.42's
``serverapp/strategy/fedavgm.py``, ``fedopt.py``, ``fedadam.py``, ``fedyogi.py``, ``fedadagrad.py``
and ``qfedavg.py``; the robust aggregators keep nothing between rounds) and checked: an attribute
that is absent (renamed upstream) or holds another kind of value raises
:class:`~strategies.flower_compat.FlowerMismatch`, instead of silently leaving the checkpoint
without it. An attribute that holds ``None`` is not set yet (before the first round) and is left
out, as Flower's own strategies then start from scratch.
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import Array, ArrayRecord
from flwr.serverapp.strategy import (
    Bulyan,
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
    Krum,
    MultiKrum,
    QFedAvg,
)

from .flower_compat import flower_mismatch

# The Flower server strategies fedquant composes with (``strategy.server`` name -> Flower class,
# strategies.registry.SERVERS), each with {attribute: what it holds once set}: one entry per strategy.
SERVER_STATE: dict[str, tuple[type, dict[str, type]]] = {
    "fedavg": (FedAvg, {}),
    "fedprox": (FedProx, {}),  # proximal_mu goes to the clients; the server keeps nothing between rounds
    "fedavgm": (FedAvgM, {"current_arrays": ArrayRecord, "momentum_vector": list}),  # list of numpy arrays
    "fedadam": (FedAdam, {"current_arrays": dict, "m_t": dict, "v_t": dict}),  # FedOpt's (name -> numpy array) + v_t
    "fedyogi": (FedYogi, {"current_arrays": dict, "m_t": dict, "v_t": dict}),  # the same FedOpt moments, Yogi's v_t
    "fedadagrad": (FedAdagrad, {"current_arrays": dict, "m_t": dict, "v_t": dict}),  # beta_1 = 0: m_t the last delta
    # order statistics / selection per round
    "fedmedian": (FedMedian, {}), "fedtrimmedavg": (FedTrimmedAvg, {}), "krum": (Krum, {}),
    "multikrum": (MultiKrum, {}), "bulyan": (Bulyan, {}),
    "qfedavg": (QFedAvg, {"current_arrays": ArrayRecord}),  # the round's global model, set again by every configure_train
}
# Flower class -> {attribute: what it holds once set}
OPTIMIZER_STATE: dict[type, dict[str, type]] = dict(SERVER_STATE.values())
_TAGS = {ArrayRecord: "record", dict: "dict", list: "list"}  # how each kind is stored in a checkpoint


def flower_class(strategy) -> type:
    """The Flower strategy class ``strategy`` is built on: the first class of its MRO that Flower defines."""
    for cls in type(strategy).__mro__:
        if cls.__module__.split(".")[0] == "flwr":
            return cls
    raise TypeError(f"{type(strategy).__name__} is not a Flower strategy")


def optimizer_attributes(strategy) -> dict[str, type]:
    """The server-optimizer attributes ``strategy``'s Flower class keeps (:data:`OPTIMIZER_STATE`)."""
    cls = flower_class(strategy)
    if cls not in OPTIMIZER_STATE:
        supported = ", ".join(c.__name__ for c in OPTIMIZER_STATE)
        raise flower_mismatch(f"{type(strategy).__name__} is built on flwr's {cls.__name__}, whose server-optimizer "
                              f"state strategies/server_state.py does not know (supported: {supported})")
    return OPTIMIZER_STATE[cls]


_MISSING = object()


def read_state(strategy) -> dict[str, object]:
    """``{attribute: value}`` for the optimizer attributes that are set (not None). Raises
    :class:`~strategies.flower_compat.FlowerMismatch` for one that is absent or of another kind."""
    cls = flower_class(strategy).__name__
    state = {}
    for name, kind in optimizer_attributes(strategy).items():
        value = getattr(strategy, name, _MISSING)
        if value is _MISSING:
            raise flower_mismatch(f"{type(strategy).__name__} (flwr {cls}) has no attribute {name!r}, where Flower "
                                  "keeps server-optimizer state that checkpoints must hold for an exact resume")
        if value is None:
            continue
        if not isinstance(value, kind):
            raise flower_mismatch(f"{type(strategy).__name__} (flwr {cls}).{name} holds a {type(value).__name__}, "
                                  f"not the {kind.__name__} strategies/server_state.py stores")
        state[name] = value
    return state


def check_server_state(strategy) -> None:
    """:func:`read_state`'s checks alone: run when the strategy is built, so a Flower that keeps its
    state elsewhere stops the run before its first round, not at its first checkpoint."""
    read_state(strategy)


def export_server_state(strategy) -> dict:
    """The strategy's optimizer attributes that are set, as tensors tagged by their container."""
    state = {}
    for name, value in read_state(strategy).items():
        if isinstance(value, ArrayRecord):
            state[name] = {"record": {k: torch.from_numpy(np.array(a.numpy())) for k, a in value.items()}}
        elif isinstance(value, dict):
            state[name] = {"dict": {k: torch.from_numpy(np.array(v)) for k, v in value.items()}}
        else:
            state[name] = {"list": [torch.from_numpy(np.array(v)) for v in value]}
    return state


def import_server_state(strategy, state: dict) -> None:
    """Inverse of :func:`export_server_state`; the state must be one this strategy's class keeps."""
    read_state(strategy)  # every attribute there, before any is overwritten
    expected = optimizer_attributes(strategy)
    for name, value in state.items():
        (tag, payload), = value.items()
        if name not in expected or _TAGS[expected[name]] != tag:
            raise ValueError(f"the checkpoint's server state {name!r} ({tag}) is not state that "
                             f"{type(strategy).__name__} (flwr {flower_class(strategy).__name__}) keeps "
                             f"({', '.join(expected) or 'none'}); was it written by another strategy.server?")
        if tag == "record":
            setattr(strategy, name, ArrayRecord({k: Array(v.numpy()) for k, v in payload.items()}))
        elif tag == "dict":
            setattr(strategy, name, {k: v.numpy() for k, v in payload.items()})
        else:
            setattr(strategy, name, [v.numpy() for v in payload])
