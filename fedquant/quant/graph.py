"""The model's dataflow as a :mod:`torch.fx` graph with layers, norms, activations and pools as
leaves: what the exporter walks, and where a conv's BatchNorm is found (the BatchNorm that a
deployment folds into the conv before it)."""

from __future__ import annotations

import torch.fx as fx
from torch import nn

from .modules import QuantLayerMixin

LEAVES = (QuantLayerMixin, nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.GroupNorm, nn.ReLU, nn.MaxPool2d,
          nn.Flatten, nn.AdaptiveAvgPool2d, nn.Identity, nn.Dropout)


class LeafTracer(fx.Tracer):
    """An fx tracer that keeps :data:`LEAVES` as single call_module nodes."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, LEAVES) or super().is_leaf_module(m, qualname)


def trace(model: nn.Module) -> fx.Graph:
    return LeafTracer().trace(model)


def batchnorm_user(node: fx.Node, modules: dict[str, nn.Module]) -> fx.Node | None:
    """The BatchNorm2d node that is conv ``node``'s only user, else None (the fold rule)."""
    if not isinstance(modules.get(node.target), nn.Conv2d) or len(node.users) != 1:
        return None
    (user,) = node.users
    return user if user.op == "call_module" and isinstance(modules.get(user.target), nn.BatchNorm2d) else None


def batchnorm_after(model: nn.Module) -> dict[str, str]:
    """``{conv name: BatchNorm name}`` for every conv whose only user is a BatchNorm2d; empty
    when the model cannot be traced (its biases then stay on their own grids)."""
    try:
        graph = trace(model)
    except Exception:  # noqa: BLE001 - an untraceable model (data-dependent control flow)
        return {}
    modules = dict(model.named_modules())
    return {node.target: user.target for node in graph.nodes
            if node.op == "call_module" and (user := batchnorm_user(node, modules)) is not None}
