"""The CIFAR training augmentation, on image tensors on the training device (no torchvision)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_crop_flip(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop with ``pad``-pixel zero padding and random horizontal flip, per image, of an
    ``[N, C, H, W]`` batch (uint8 images: the padding is black, as in the literature's recipe).

    Image ``n`` becomes ``flip_n(padded_n[:, i_n : i_n + H, j_n : j_n + W])`` with offsets
    ``i_n, j_n`` uniform in ``0 .. 2 pad`` and ``flip_n`` a coin toss, all drawn from
    ``generator`` (on the CPU, so runs are reproducible on any device); the result is on ``x``'s
    device with its dtype.
    """
    n, _, h, w = x.shape
    offsets = torch.randint(0, 2 * pad + 1, (2, n), generator=generator).to(x.device)
    flips = torch.rand(n, generator=generator).lt(0.5).to(x.device)
    padded = F.pad(x, (pad, pad, pad, pad))
    rows = offsets[0, :, None] + torch.arange(h, device=x.device)  # [N, H]
    cols = offsets[1, :, None] + torch.arange(w, device=x.device)  # [N, W]
    cols = torch.where(flips[:, None], cols.flip(1), cols)
    batch = torch.arange(n, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # [N, H, W, C]
    return out.permute(0, 3, 1, 2).contiguous()
