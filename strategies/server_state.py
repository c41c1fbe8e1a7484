"""Flower's server-optimizer state (FedAvgM momentum, FedOpt moments) as tensors and back, so a
weights-only checkpoint can hold it."""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import Array, ArrayRecord

SERVER_STATE = ("current_arrays", "momentum_vector", "m_t", "v_t")  # FedAvgM / FedOpt attributes


def export_server_state(strategy) -> dict:
    """The strategy's optimizer attributes that exist, as tensors tagged by their container."""
    state = {}
    for name in SERVER_STATE:
        value = getattr(strategy, name, None)
        if isinstance(value, ArrayRecord):
            state[name] = {"record": {k: torch.from_numpy(np.array(a.numpy())) for k, a in value.items()}}
        elif isinstance(value, dict):
            state[name] = {"dict": {k: torch.from_numpy(np.array(v)) for k, v in value.items()}}
        elif isinstance(value, list):
            state[name] = {"list": [torch.from_numpy(np.array(v)) for v in value]}
    return state


def import_server_state(strategy, state: dict) -> None:
    """Inverse of :func:`export_server_state`."""
    for name, value in state.items():
        if "record" in value:
            setattr(strategy, name, ArrayRecord({k: Array(v.numpy()) for k, v in value["record"].items()}))
        elif "dict" in value:
            setattr(strategy, name, {k: v.numpy() for k, v in value["dict"].items()})
        else:
            setattr(strategy, name, [v.numpy() for v in value["list"]])
