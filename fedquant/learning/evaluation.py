"""Server-side test of the global model at every evaluation setting (plain PyTorch).

The protocol (:class:`EvalProtocol`, stated in every results.json) for each setting:

1. load the global state and switch the bit-widths (first/last layers at their pinned bits when
   the model pins them);
2. BatchNorm: one rule for every setting, float included: statistics re-estimated on the
   calibration images at this setting (``reestimate_bn``), or the trained ones everywhere;
3. quantized settings: weight ranges (``max`` or ``mse``), optionally AdaRound, activation
   ranges on the calibration images (``minmax``, ``mse`` or ``percentile``), optionally
   empirical bias correction followed by a second calibration pass, and (``integer_bias``, on by
   default) every bias of a quantized layer put on its int32 grid ``s_x s_w`` (with the following
   BatchNorm folded, as deployed: :mod:`fedquant.quant.integer_bias`);
4. accuracy and loss on the validation images (where choices are made) and on the test set
   (only reported).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn

from ..data import Dataset
from ..federation.bitwidths import FLOAT, Setting, setting_name
from ..fields import check_fields, key
from ..models.state import load_float_state
from ..quant import calibrate, quant_layers, reestimate_batchnorm, set_bitwidth, set_weight_ranges
from ..quant.adaround import AdaRoundConfig, adaround
from ..quant.bias_correction import correct_bias
from ..quant.config import ACT_RANGES, WEIGHT_RANGES
from ..quant.graph import batchnorm_after
from ..quant.integer_bias import quantize_biases
from .batches import memory_format_for, to_input

PTQ_METHODS = ("basic", "adaround")
SettingHook = Callable[[str, int, int], None]  # on_setting(name, i, m): setting i of m starts
SCALE_BYTES = 4  # float32 scales
POW2_SCALE_BYTES = 1  # a power-of-two scale 2^k is stored as its exponent k (int8: a shift amount)


def scale_bytes(pow2: bool) -> int:
    """Bytes of one stored scale: float32, or the int8 exponent of a power of two."""
    return POW2_SCALE_BYTES if pow2 else SCALE_BYTES


def zero_point_bytes(bits: int) -> int:
    """A zero-point is stored in the tensor's own integer container: 1 byte up to 8 bits, else 2."""
    return 1 if bits <= 8 else 2


def model_bytes(model: nn.Module, setting: Setting) -> int:
    """Deployed size: Conv/Linear weights at their bit-width (pinned layers at theirs), every
    other parameter (biases, norm affine) at 32 bits, and the quantization parameters: per
    quantized weight channel (one per tensor, with a per-tensor scheme) a scale and a zero-point,
    per quantized activation tensor a scale and a zero-point (:func:`zero_point_bytes`); a scale
    is a float32, or with power-of-two scales its int8 exponent (:func:`scale_bytes`). Statistics
    are excluded."""
    bits_total = 0
    counted = set()
    for layer in quant_layers(model):
        w, a = layer.effective_bits(*setting)
        bits_total += layer.weight.numel() * (w or 32)
        wq, aq = layer.weight_quantizer, layer.input_quantizer
        if w is not None:
            bits_total += wq.num_scales * 8 * (scale_bytes(wq.pow2) + zero_point_bytes(w))
        if a is not None:
            bits_total += 8 * (scale_bytes(aq.pow2) + zero_point_bytes(a))
        counted.add(id(layer.weight))
    bits_total += sum(p.numel() * 32 for p in model.parameters() if id(p) not in counted)
    return math.ceil(bits_total / 8)


@dataclass(frozen=True)
class EvalProtocol:
    """How the server turns the global model into a deployed model at each setting (the ``eval``
    options of the config, which the experiment schema takes from these fields)."""

    weight_range: str = key("max", "weight range per setting: max (|w|max) | mse (MSE-optimal clip)",
                            choices=WEIGHT_RANGES)
    act_range: str = key("minmax", "activation range on the calibration images: minmax | mse | percentile",
                         choices=ACT_RANGES)
    act_percentile: float = key(99.99, "for act_range=percentile", gt=50.0, le=100.0)
    reestimate_bn: bool = key(True, "one BatchNorm rule for every setting, fp included: re-estimate on the "
                                    "calibration images (true) or keep the trained statistics (false)")
    ptq: str = key("basic", "post-training quantization: basic (round to nearest) | adaround", choices=PTQ_METHODS)
    adaround_iterations: int = key(500, "AdaRound iterations per layer (the paper uses 10,000)", ge=1)
    bias_correction: bool = key(False, "empirical bias correction of layers with a bias (after calibration)")
    integer_bias: bool = key(True, "biases of quantized layers in int32 on the grid s_x s_w (BatchNorm folded into "
                                   "the conv before it), as integer runtimes hold them; false: float biases")

    def __post_init__(self) -> None:
        check_fields(self)  # the same field rules the config is checked with

    def describe(self, model: nn.Module, calibration: int, validation: int) -> dict:
        """The protocol as results.json states it."""
        pinned = {layer.pinned_bits for layer in quant_layers(model) if layer.pinned}
        has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
        bn = ("no BatchNorm in the model" if not has_bn else
              "re-estimated on the calibration images for every setting, fp included" if self.reestimate_bn
              else "trained statistics for every setting")
        return {"first_last_bits": min(pinned) if pinned else None, "batchnorm": bn,
                "weight_range": self.weight_range, "act_range": self.act_range
                + (f" ({self.act_percentile:g}th)" if self.act_range == "percentile" else ""),
                "ptq": self.ptq + (f" ({self.adaround_iterations} iterations per layer)" if self.ptq == "adaround"
                                   else "") + (" + bias correction" if self.bias_correction else ""),
                "bias": ("float" if not self.integer_bias else "int32 on s_x s_w (power-of-two scales: BatchNorm not "
                         "folded)" if any(layer.weight_quantizer.pow2 for layer in quant_layers(model))
                         else "int32 on s_x s_w (BatchNorm folded into the conv before it)"),
                "calibration_samples": calibration, "validation_samples": validation}


@dataclass
class Evaluator:
    """Tests one model architecture at ``settings``; call it with a global state dict."""

    model: nn.Module
    data: Dataset
    calibration: torch.Tensor  # indices into data.train_x
    validation: torch.Tensor  # indices into data.train_x
    settings: list[Setting]
    protocol: EvalProtocol = field(default_factory=EvalProtocol)
    batch_size: int = 256  # faster than larger batches on CPU here (cache); see docs/benchmarks.md
    device: torch.device | str = "cpu"

    def __post_init__(self) -> None:
        fmt = memory_format_for(self.model)
        self.model = self.model.to(self.device, memory_format=fmt)
        x = self.data.train_x[self.calibration]
        self._calib = [to_input(self.data, x[i:i + 256], self.device, fmt) for i in range(0, len(x), 256)]
        self._float: nn.Module | None = None  # the float reference for bias correction
        self._batchnorm_after: dict[str, str] | None = None  # conv -> the BatchNorm folded into it

    def with_data(self, **fields) -> Evaluator:
        """The same evaluator with other data fields (e.g. ``calibration``)."""
        return replace(self, **fields)

    def model_bytes(self) -> dict[str, int]:
        return {setting_name(s): model_bytes(self.model, s) for s in self.settings}

    def describe(self) -> dict:
        return self.protocol.describe(self.model, len(self.calibration), len(self.validation))

    def deploy(self, state: dict[str, torch.Tensor], setting: Setting) -> nn.Module:
        """The model as deployed at ``setting``: steps 1-3 of the module docstring."""
        p = self.protocol
        load_float_state(self.model, state)
        set_bitwidth(self.model, *setting)
        if setting == FLOAT:
            if p.reestimate_bn and self._calib:
                reestimate_batchnorm(self.model, self._calib)
            return self.model
        set_weight_ranges(self.model, p.weight_range)
        if p.ptq == "adaround":
            adaround(self.model, self._calib, AdaRoundConfig(iterations=p.adaround_iterations))
        self._calibrate()
        if p.bias_correction:
            correct_bias(self.model, self._float_reference(state), self._calib)
            self._calibrate()  # the corrected biases move the ranges of the layers after them
        if p.integer_bias:  # last: the grids need the final ranges; the ranges stay (as a runtime's do)
            if self._batchnorm_after is None:
                self._batchnorm_after = batchnorm_after(self.model)
            quantize_biases(self.model, self._batchnorm_after)
        return self.model

    def _calibrate(self) -> None:
        p = self.protocol
        calibrate(self.model, self._calib, p.act_range, reestimate_bn=p.reestimate_bn, weight_range=None,
                  percentile=p.act_percentile)

    def _float_reference(self, state: dict[str, torch.Tensor]) -> nn.Module:
        if self._float is None:
            self._float = copy.deepcopy(self.model)
        load_float_state(self._float, state)
        set_bitwidth(self._float, None, None)
        if self.protocol.reestimate_bn:
            reestimate_batchnorm(self._float, self._calib)
        return self._float

    def __call__(self, state: dict[str, torch.Tensor],
                 on_setting: SettingHook | None = None) -> dict[str, dict[str, dict[str, float]]]:
        """``{"test": {setting: {accuracy, loss}}, "validation": {...}}`` (validation empty
        without a validation split); ``on_setting(name, i, m)`` is called as setting ``i`` of
        ``m`` starts (progress displays)."""
        test, validation = {}, {}
        for i, setting in enumerate(self.settings, 1):
            name = setting_name(setting)
            if on_setting is not None:
                on_setting(name, i, len(self.settings))
            model = self.deploy(state, setting)
            if len(self.validation):
                acc, loss = accuracy(model, self.data, self.data.train_x[self.validation],
                                     self.data.train_y[self.validation], self.batch_size, self.device)
                validation[name] = {"accuracy": acc, "loss": loss}
            acc, loss = accuracy(model, self.data, self.data.test_x, self.data.test_y, self.batch_size, self.device)
            test[name] = {"accuracy": acc, "loss": loss}
        return {"test": test, "validation": validation}


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
