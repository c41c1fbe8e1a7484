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
from torch import nn

from .bitwidths import FLOAT, Setting, setting_name
from .data import Dataset
from .protocol import load_transport_state
from .quant import calibrate, quant_layers, set_bitwidth
from .training import accuracy, memory_format_for, to_input


def model_bytes(model: nn.Module, setting: Setting) -> int:
    """Deployed size: Conv/Linear weights at their bit-width (pinned layers at theirs), every
    other parameter (biases, norm affine) at 32 bits; statistics and quantizer ranges excluded."""
    bits_total = 0
    counted = set()
    for layer in quant_layers(model):
        w = setting[0]
        if w is not None and layer.pinned:
            w = layer.pinned_bits
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
