"""Small BatchNorm CNN for 28x28 grey-scale images (Fashion-MNIST)."""

from __future__ import annotations

from torch import nn


def _conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


class CNN(nn.Sequential):
    """Two conv-BN-ReLU-pool stages (32, 64 channels) and a 128-unit classifier."""

    def __init__(self, in_channels: int, num_classes: int, image_size: int = 28) -> None:
        side = image_size // 4
        super().__init__(
            *_conv_bn_relu(in_channels, 32), nn.MaxPool2d(2),
            *_conv_bn_relu(32, 64), nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * side * side, 128), nn.ReLU(),
            nn.Linear(128, num_classes),
        )
