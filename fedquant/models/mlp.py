"""Multi-layer perceptron for small flattened inputs (scikit-learn digits: 8x8)."""

from __future__ import annotations

from torch import nn

from .width import check_width, scaled, sub_width


class MLP(nn.Sequential):
    """``Flatten -> [Linear -> ReLU] * len(hidden) -> Linear``.

    ``width`` < 1 (HeteroFL sub-model, see :mod:`fedquant.models.width`): each hidden layer
    keeps ``ceil(width * units)`` units, and its ReLU runs on a Scaler's output.
    """

    def __init__(self, in_features: int, num_classes: int, hidden: tuple[int, ...] = (128, 64),
                 width: float = 1.0) -> None:
        width = check_width(width)
        layers: list[nn.Module] = [nn.Flatten()]
        for units in hidden:
            units = sub_width(units, width)
            layers += [nn.Linear(in_features, units), scaled(nn.ReLU(), width)]
            in_features = units
        layers.append(nn.Linear(in_features, num_classes))
        super().__init__(*layers)
