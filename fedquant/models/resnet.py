"""ResNet-20 for 32x32 images (He et al. 2016, section 4.2: 3 stages x 3 basic blocks, 16/32/64)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .width import check_width, scaled, sub_width

NORMS = ("batch", "group")
GROUPS = 8  # GroupNorm groups of the full-width model


def _norm(kind: str, channels: int, width: float) -> nn.Module:
    """The norm after a conv of ``channels`` (full-width count), kept at ``width``, with the
    Scaler of :func:`~fedquant.models.width.scaled` when ``width`` < 1.

    GroupNorm with 8 groups (2..8 channels a group here) is the usual non-IID-friendly choice.
    A sub-model keeps the group size (not the group count), so that its groups are the global
    model's first groups and its output the global one's first channels.
    """
    kept = sub_width(channels, width)
    if kind == "batch":
        return scaled(nn.BatchNorm2d(kept), width)
    size = channels // GROUPS
    if kept % size:
        raise ValueError(f"model.norm=group does not support width={width} here: {kept} of "
                         f"{channels} channels is not a whole number of groups of {size}")
    return scaled(nn.GroupNorm(kept // size, kept), width)


class BasicBlock(nn.Module):
    """Two 3x3 convs with an identity shortcut; option A (zero-padded subsampling) when shapes change.

    At ``width`` < 1 the block is the global one restricted to its first ``k_in`` input and
    ``k_out`` output channels: the global shortcut puts input channel ``i`` on output channel
    ``(cout - cin) // 2 + i``, and the sub-block keeps that placement, dropping the inputs that
    land beyond ``k_out`` (none at width 1 or 0.5; all of them at 0.25, where the shortcut of
    a downsampling block is zero on every kept channel).
    """

    def __init__(self, cin: int, cout: int, stride: int, norm: str, width: float = 1.0) -> None:
        super().__init__()
        k_in, k_out = sub_width(cin, width), sub_width(cout, width)
        self.conv1 = nn.Conv2d(k_in, k_out, 3, stride, 1, bias=False)
        self.bn1 = _norm(norm, cout, width)
        self.conv2 = nn.Conv2d(k_out, k_out, 3, 1, 1, bias=False)
        self.bn2 = _norm(norm, cout, width)
        left = min((cout - cin) // 2, k_out)
        self.through = max(0, min(k_in, k_out - left))  # input channels the shortcut passes on
        self.crop = self.through < k_in
        self.pads = (left, k_out - left - self.through)
        self.stride = stride

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1 and self.pads == (0, 0):
            return x
        x = x[:, :, :: self.stride, :: self.stride]
        if self.crop:
            x = x[:, : self.through]
        return F.pad(x, (0, 0, 0, 0, *self.pads))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet20(nn.Module):
    """The CIFAR ResNet-20: 19 conv layers + 1 linear, 0.27M parameters.

    ``width`` < 1 (HeteroFL sub-model, see :mod:`fedquant.models.width`): ``ceil(width * C)`` of
    the 16/32/64 channels of every conv, a Scaler before each norm, and the shortcuts of
    :class:`BasicBlock`; the input channels and the classes stay full.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 10, norm: str = "batch",
                 width: float = 1.0) -> None:
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"model.norm={norm!r} is not valid: allowed are {', '.join(NORMS)}")
        width = check_width(width)
        self.conv = nn.Conv2d(in_channels, sub_width(16, width), 3, 1, 1, bias=False)
        self.bn = _norm(norm, 16, width)
        blocks, cin = [], 16
        for cout, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(3):
                blocks.append(BasicBlock(cin, cout, stride if i == 0 else 1, norm, width))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(sub_width(64, width), num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(F.relu(self.bn(self.conv(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
