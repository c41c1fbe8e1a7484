"""Regularizers that make float training robust to later quantization."""

from __future__ import annotations

import torch
from torch import nn

KURE_TARGET = 1.8  # kurtosis of a uniform distribution


def _layer_weights(model: nn.Module) -> list[torch.Tensor]:
    ws = [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    if not ws:
        raise ValueError(f"model {type(model).__name__} has no Conv2d/Linear weight to regularise")
    return ws


def kurtosis(w: torch.Tensor) -> torch.Tensor:
    """``K = mean(((w - mu) / sigma)^4)`` (population moments)."""
    z = (w - w.mean()) / w.std(unbiased=False).clamp_min(1e-12)
    return z.pow(4).mean()


def kurtosis_loss(model: nn.Module, target: float = KURE_TARGET) -> torch.Tensor:
    """KURE (Shkolnik et al. 2020): ``mean_layers (K_l - K_T)^2``; multiply by lambda yourself."""
    return torch.stack([(kurtosis(w) - target) ** 2 for w in _layer_weights(model)]).mean()


def gradient_l1_loss(loss: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """Gradient-L1 (Alizadeh et al. 2020): ``||dL/dW||_1`` over all Conv/Linear weights.

    Built with ``create_graph=True`` so that it can itself be differentiated (double backprop).
    """
    grads = torch.autograd.grad(loss, _layer_weights(model), create_graph=True)
    return sum(g.abs().sum() for g in grads)
