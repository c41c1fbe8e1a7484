"""Server-side test of the global model at every evaluation setting (plain PyTorch).

For each setting: load the global state, switch the bit-widths, and in one pass over the
server's calibration hold-out set the activation ranges (min-max or MSE) and, optionally,
re-estimate BatchNorm statistics with the quantized weights; then measure test accuracy/loss.
Float (``fp``) is evaluated as it is: the global model without calibration.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..data import Dataset
from ..federation.bitwidths import FLOAT, Setting, setting_name
from ..federation.protocol import load_transport_state
from ..quant import calibrate, quant_layers, set_bitwidth
from .batches import memory_format_for, to_input


def model_bytes(model: nn.Module, setting: Setting) -> int:
    """Deployed size: Conv/Linear weights at their bit-width (pinned layers at theirs), every
    other parameter (biases, norm affine) at 32 bits; statistics and quantizer ranges excluded."""
    bits_total = 0
    counted = set()
    for layer in quant_layers(model):
        w = layer.effective_bits(*setting)[0]
        bits_total += layer.weight.numel() * (w or 32)
        counted.add(id(layer.weight))
    bits_total += sum(p.numel() * 32 for p in model.parameters() if id(p) not in counted)
    return math.ceil(bits_total / 8)


@dataclass
class Evaluator:
    """Tests one model architecture at ``settings``; call it with a global state dict."""

    model: nn.Module
    data: Dataset
    calibration: torch.Tensor  # indices into data.train_x
    settings: list[Setting]
    estimator: str = "minmax"
    reestimate_bn: bool = True
    batch_size: int = 256  # faster than larger batches on CPU here (cache); see docs/benchmarks.md
    device: torch.device | str = "cpu"

    def __post_init__(self) -> None:
        fmt = memory_format_for(self.model)
        self.model = self.model.to(self.device, memory_format=fmt)
        x = self.data.train_x[self.calibration]
        self._calib = [to_input(self.data, x[i:i + 256], self.device, fmt) for i in range(0, len(x), 256)]

    def model_bytes(self) -> dict[str, int]:
        return {setting_name(s): model_bytes(self.model, s) for s in self.settings}

    def __call__(self, state: dict[str, torch.Tensor]) -> dict[str, dict[str, float]]:
        results = {}
        for setting in self.settings:
            load_transport_state(self.model, state)
            set_bitwidth(self.model, *setting)
            if setting != FLOAT and self._calib:
                calibrate(self.model, self._calib, self.estimator, reestimate_bn=self.reestimate_bn)
            acc, loss = accuracy(self.model, self.data, self.data.test_x, self.data.test_y, self.batch_size, self.device)
            results[setting_name(setting)] = {"accuracy": acc, "loss": loss}
        return results


@torch.inference_mode()
def accuracy(model: nn.Module, data: Dataset, x: torch.Tensor, y: torch.Tensor,
             batch_size: int = 256, device: torch.device | str = "cpu") -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of ``model`` in eval mode on uint8 images ``x``."""
    fmt = memory_format_for(model)
    model.to(device, memory_format=fmt).eval()
    correct = torch.zeros((), device=device)
    loss = torch.zeros((), device=device, dtype=torch.float64)
    for i in range(0, len(x), batch_size):
        xb = to_input(data, x[i:i + batch_size], device, fmt)
        yb = y[i:i + batch_size].to(device)
        out = model(xb)
        loss += F.cross_entropy(out, yb, reduction="sum").double()
        correct += (out.argmax(1) == yb).sum()
    return float(correct) / len(x), float(loss) / len(x)
