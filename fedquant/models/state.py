"""The model state that federated training shares: what clients receive, train and send back, what
the server averages, checkpoints, evaluates and exports."""

from __future__ import annotations

import torch
from torch import nn


def float_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and float buffer of ``model`` (latent weights, BatchNorm statistics,
    quantizer ranges), detached; integer counters (BatchNorm ``num_batches_tracked``) stay local."""
    return {k: v.detach() for k, v in model.state_dict().items() if v.is_floating_point()}


def load_float_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a :func:`float_state` into ``model``; fails loudly on a key mismatch."""
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        raise ValueError(f"model state does not match the model: missing {missing}, unexpected {result.unexpected_keys}")
