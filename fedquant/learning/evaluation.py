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

A device profile with a byte ``budget`` (:class:`Budget`) is tested at the mixed-precision
assignment the server chooses for it (:meth:`Evaluator.assign`): each layer's sensitivity at each
option is measured on the calibration images (loss change, :meth:`Evaluator.sensitivities`), the
knapsack of :mod:`fedquant.quant.mixed_precision` picks the assignment that fits, and that
assignment is then deployed and tested by steps 1-4 like any setting.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from fractions import Fraction

import torch
import torch.nn.functional as F
from torch import nn

from ..data import Dataset
from ..federation.bitwidths import FLOAT, Setting, setting_name
from ..fields import check_fields, key
from ..models.state import load_float_state
from ..quant import (
    LayerBits,
    apply_bits,
    calibrate,
    quant_layers,
    reestimate_batchnorm,
    set_bitwidth,
    set_weight_ranges,
)
from ..quant.adaround import AdaRoundConfig, adaround
from ..quant.bias_correction import correct_bias
from ..quant.config import ACT_RANGES, WEIGHT_RANGES
from ..quant.graph import batchnorm_after
from ..quant.integer_bias import quantize_biases
from ..quant.mixed_precision import BudgetError, smallest_bits, solve
from ..quant.size import layer_bits, model_bytes, other_bits
from .batches import memory_format_for, to_input

PTQ_METHODS = ("basic", "adaround")
SettingHook = Callable[[str, int, int], None]  # on_setting(name, i, m): setting i of m starts
MIXED_PRECISION_MEASURE = ("per layer and option, the mean cross-entropy change on the calibration images with only that "
                           "layer quantized; the assignment minimising its sum under the byte budget (0/1 knapsack, "
                           "scipy.optimize.milp); at the final evaluation")
__all__ = ["MIXED_PRECISION_MEASURE", "Budget", "EvalProtocol", "Evaluator", "accuracy", "model_bytes"]  # model_bytes: fedquant.quant.size


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


@dataclass(frozen=True)
class Budget:
    """A profile's mixed-precision target: at most ``budget`` bytes (an int), or that fraction of
    the float model's bytes (a ``Fraction`` in (0, 1]: ``floor(budget * model_bytes(fp))``, exact),
    each layer at one of ``options`` (pinned layers at their pinned bits)."""

    budget: int | Fraction
    options: tuple[Setting, ...]

    def bytes_for(self, model: nn.Module) -> int:
        """The budget in bytes for ``model``."""
        if isinstance(self.budget, int):
            return self.budget
        return math.floor(self.budget * model_bytes(model, FLOAT))

    def costs(self, model: nn.Module) -> list[list[int]]:
        """``c[l][j]``: bits of quantized layer ``l`` at option ``j`` (:func:`layer_bits`)."""
        return [[layer_bits(layer, s) for s in self.options] for layer in quant_layers(model)]

    def smallest_bytes(self, model: nn.Module) -> int:
        """The smallest ``model_bytes`` any assignment over ``options`` reaches."""
        return math.ceil(smallest_bits(self.costs(model), other_bits(model)) / 8)


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
    budgets: dict[str, Budget] = field(default_factory=dict)  # result name -> a profile's mixed-precision budget

    def __post_init__(self) -> None:
        fmt = memory_format_for(self.model)
        self.model = self.model.to(self.device, memory_format=fmt)
        x = self.data.train_x[self.calibration]
        self._calib = [to_input(self.data, x[i:i + 256], self.device, fmt) for i in range(0, len(x), 256)]
        self._float: nn.Module | None = None  # the float reference for bias correction
        self._batchnorm_after: dict[str, str] | None = None  # conv -> the BatchNorm folded into it
        self.assignments: dict[str, dict] = {}  # budget name -> the assignment of the last call (assign)

    def with_data(self, **fields) -> Evaluator:
        """The same evaluator with other data fields (e.g. ``calibration``)."""
        return replace(self, **fields)

    @property
    def jobs(self) -> int:
        """What one call tests: every setting and every budget's assignment."""
        return len(self.settings) + len(self.budgets)

    def model_bytes(self) -> dict[str, int]:
        """Bytes per setting (a budget's assignment: in its ``mixed_precision`` entry)."""
        return {setting_name(s): model_bytes(self.model, s) for s in self.settings}

    def sensitivities(self, state: dict[str, torch.Tensor], options: tuple[Setting, ...]) -> list[list[float]]:
        """``D[l][j] = L(layer l alone at options[j]) - L(fp)``: the mean cross-entropy on the
        calibration images when only quantized layer ``l`` runs at option ``j`` (deployed by the
        protocol: its weight range, its input's activation range calibrated, BatchNorm
        re-estimated when the protocol does; AdaRound and bias correction are not run here), minus
        that of the float model. Pinned layers run at their pinned bits whatever the option: 0."""
        x, y = self.data.train_x[self.calibration], self.data.train_y[self.calibration]
        base = accuracy(self.deploy(state, FLOAT), self.data, x, y, self.batch_size, self.device)[1]
        layers = list(quant_layers(self.model))
        out = []
        for i, layer in enumerate(layers):
            if layer.pinned:
                out.append([0.0] * len(options))
                continue
            row = []
            for option in options:
                only = LayerBits([option if k == i else FLOAT for k in range(len(layers))])
                model = self.deploy(state, only, ptq=False)
                row.append(accuracy(model, self.data, x, y, self.batch_size, self.device)[1] - base)
            out.append(row)
        return out

    def assign(self, state: dict[str, torch.Tensor], name: str) -> LayerBits:
        """The mixed-precision assignment of budget ``name`` for ``state``: the knapsack of
        :func:`fedquant.quant.mixed_precision.solve` over :meth:`sensitivities` and the exact
        per-layer bits (:func:`fedquant.quant.size.layer_bits`); it is kept in
        ``assignments[name]`` (bits per layer, bytes, budget, total sensitivity)."""
        budget = self.budgets[name]
        layers = list(quant_layers(self.model))
        limit = budget.bytes_for(self.model)
        try:
            choice = solve(self.sensitivities(state, budget.options), budget.costs(self.model), 8 * limit,
                           other_bits(self.model))
        except BudgetError:
            raise BudgetError(f"{name}: a budget of {limit:,} bytes is below the smallest assignment of "
                              f"{[setting_name(s) for s in budget.options]}, {budget.smallest_bytes(self.model):,} "
                              "bytes") from None
        bits = LayerBits([budget.options[j] for j in choice.options])
        self.assignments[name] = {
            "layers": [n for n, m in self.model.named_modules() if m in layers],
            "bits": [setting_name(layer.effective_bits(*s)) for layer, s in zip(layers, bits, strict=True)],
            "model_bytes": model_bytes(self.model, bits), "budget_bytes": limit,
            "sensitivity": choice.sensitivity}
        return bits

    def describe(self) -> dict:
        return self.protocol.describe(self.model, len(self.calibration), len(self.validation))

    def deploy(self, state: dict[str, torch.Tensor], setting: Setting | LayerBits, ptq: bool = True) -> nn.Module:
        """The model as deployed at ``setting`` (one per layer: a :class:`LayerBits`): steps 1-3
        of the module docstring (``ptq=False``: without AdaRound and bias correction)."""
        p = self.protocol
        load_float_state(self.model, state)
        apply_bits(self.model, setting)
        if setting == FLOAT:
            if p.reestimate_bn and self._calib:
                reestimate_batchnorm(self.model, self._calib)
            return self.model
        set_weight_ranges(self.model, p.weight_range)
        if p.ptq == "adaround" and ptq:
            adaround(self.model, self._calib, AdaRoundConfig(iterations=p.adaround_iterations))
        self._calibrate()
        if p.bias_correction and ptq:
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
        """``{"test": {setting: {accuracy, loss}}, "validation": {...}, "mixed_precision": {budget
        name: its assignment}}`` (validation empty without a validation split, mixed_precision
        without budgets); ``on_setting(name, i, m)`` is called as setting ``i`` of ``m`` starts
        (progress displays)."""
        test, validation = {}, {}
        jobs = [(setting_name(s), s) for s in self.settings] + [(name, None) for name in self.budgets]  # None: assign
        for i, (name, setting) in enumerate(jobs, 1):
            if on_setting is not None:
                on_setting(name, i, len(jobs))
            model = self.deploy(state, self.assign(state, name) if setting is None else setting)
            if len(self.validation):
                acc, loss = accuracy(model, self.data, self.data.train_x[self.validation],
                                     self.data.train_y[self.validation], self.batch_size, self.device)
                validation[name] = {"accuracy": acc, "loss": loss}
            acc, loss = accuracy(model, self.data, self.data.test_x, self.data.test_y, self.batch_size, self.device)
            test[name] = {"accuracy": acc, "loss": loss}
        return {"test": test, "validation": validation,
                "mixed_precision": {name: self.assignments[name] for name in self.budgets}}


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
