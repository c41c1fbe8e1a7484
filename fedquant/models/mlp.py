"""Multi-layer perceptron for small flattened inputs (scikit-learn digits: 8x8)."""

from __future__ import annotations

from torch import nn


class MLP(nn.Sequential):
    """``Flatten -> [Linear -> ReLU] * len(hidden) -> Linear``."""

    def __init__(self, in_features: int, num_classes: int, hidden: tuple[int, ...] = (128, 64)) -> None:
        layers: list[nn.Module] = [nn.Flatten()]
        for width in hidden:
            layers += [nn.Linear(in_features, width), nn.ReLU()]
            in_features = width
        layers.append(nn.Linear(in_features, num_classes))
        super().__init__(*layers)
