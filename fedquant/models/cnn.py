"""Small BatchNorm CNN for 28x28 grey-scale images (Fashion-MNIST)."""

from __future__ import annotations

from torch import nn

from .width import check_width, scaled, sub_width


def _conv_bn_relu(cin: int, cout: int, width: float) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), scaled(nn.BatchNorm2d(cout), width),
            nn.ReLU()]


class CNN(nn.Sequential):
    """Two conv-BN-ReLU-pool stages (32, 64 channels) and a 128-unit classifier.

    ``width`` < 1 (HeteroFL sub-model, see :mod:`fedquant.models.width`): ``ceil(width * C)`` of
    the 32, 64 and 128 hidden channels/units; a Scaler runs before each BatchNorm and before the
    hidden ReLU. The flatten is channel-major (C, H, W), so the first ``k`` channels are the
    first ``k * side * side`` inputs of the first Linear: the sub-model's weight is still the
    leading block of the global one.
    """

    def __init__(self, in_channels: int, num_classes: int, image_size: int = 28,
                 width: float = 1.0) -> None:
        width = check_width(width)
        side = image_size // 4
        c1, c2, hidden = (sub_width(c, width) for c in (32, 64, 128))
        super().__init__(
            *_conv_bn_relu(in_channels, c1, width), nn.MaxPool2d(2),
            *_conv_bn_relu(c1, c2, width), nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(c2 * side * side, hidden), scaled(nn.ReLU(), width),
            nn.Linear(hidden, num_classes),
        )
