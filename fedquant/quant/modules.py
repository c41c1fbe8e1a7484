"""Quantized Conv2d/Linear and the model-level switches (quantize_model, set_bitwidth,
set_layer_bits for one setting per layer)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .config import QuantConfig, check_bits
from .quantizers import ActivationQuantizer, WeightQuantizer


class QuantLayerMixin:
    """Adds an input (activation) quantizer and a weight quantizer to a Conv/Linear layer.

    The layer keeps its own ``weight``/``bias`` parameters (the float latent weights stay the
    trainable state, with their original ``state_dict`` names); the quantizers add only
    ``<layer>.weight_quantizer.*`` and ``<layer>.input_quantizer.*`` entries. Biases stay in float
    (they live in int32 accumulators on integer hardware).
    """

    weight_quantizer: WeightQuantizer
    input_quantizer: ActivationQuantizer
    pinned: bool
    pinned_bits: int

    def _attach_quantizers(self, config: QuantConfig, pinned: bool) -> None:
        pow2 = config.scale == "pow2"
        self.weight_quantizer = WeightQuantizer(
            self.weight, config.weight_granularity, config.narrow_range, config.learned_ranges, pow2)
        self.input_quantizer = ActivationQuantizer(
            config.range_tracking, config.momentum, config.learned_ranges, pow2)
        self.pinned = pinned
        self.pinned_bits = config.pinned_bits

    def effective_bits(self, weight_bits: int | None, act_bits: int | None) -> tuple[int | None, int | None]:
        """The bit-widths this layer runs at when the model is set to ``(weight_bits, act_bits)``:
        a pinned layer runs at ``pinned_bits`` unless set to float."""
        if self.pinned:
            weight_bits = None if weight_bits is None else self.pinned_bits
            act_bits = None if act_bits is None else self.pinned_bits
        return weight_bits, act_bits

    def set_bits(self, weight_bits: int | None, act_bits: int | None) -> None:
        """Switch both quantizers to :meth:`effective_bits`."""
        weight_bits, act_bits = self.effective_bits(weight_bits, act_bits)
        self.weight_quantizer.set_bits(weight_bits)
        self.input_quantizer.set_bits(act_bits)


class QuantLinear(QuantLayerMixin, nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.input_quantizer(x), self.weight_quantizer(self.weight), self.bias)


class QuantConv2d(QuantLayerMixin, nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self.input_quantizer(x), self.weight_quantizer(self.weight), self.bias)


_QUANT_CLASS = {nn.Linear: QuantLinear, nn.Conv2d: QuantConv2d}


def quant_layers(model: nn.Module) -> Iterator[QuantLayerMixin]:
    """The quantized layers of ``model`` in definition order."""
    return (m for m in model.modules() if isinstance(m, QuantLayerMixin))


def quantize_model(model: nn.Module, config: QuantConfig | None = None) -> nn.Module:
    """Wrap every ``nn.Conv2d``/``nn.Linear`` of ``model`` (in place) with fake quantizers.

    The layers are converted by swapping their class, so parameters, buffers, hooks and
    ``state_dict`` names are untouched: ``model.load_state_dict(float_state, strict=False)`` and
    the reverse work with only the quantizer entries missing. Returns ``model`` for chaining,
    set to ``config.weight_bits``/``config.act_bits``.
    """
    config = config or QuantConfig()
    if any(True for _ in quant_layers(model)):
        raise ValueError("model is already quantized: quantize the float model once, then switch bit-widths with set_bitwidth")
    layers = [m for m in model.modules() if type(m) in _QUANT_CLASS]
    if not layers:
        kinds = ", ".join(cls.__name__ for cls in _QUANT_CLASS)
        raise ValueError(
            f"model {type(model).__name__} has no quantizable layer: allowed layer types are {kinds}")
    for i, layer in enumerate(layers):
        layer.__class__ = _QUANT_CLASS[type(layer)]
        layer._attach_quantizers(config, pinned=config.pin_first_last and i in (0, len(layers) - 1))
    set_bitwidth(model, config.weight_bits, config.act_bits)
    return model


def set_bitwidth(model: nn.Module, weight_bits: int | None, act_bits: int | None) -> nn.Module:
    """Switch every quantizer of ``model`` at once; ``None`` is exact float pass-through."""
    weight_bits = check_bits(weight_bits, "weight_bits")
    act_bits = check_bits(act_bits, "act_bits")
    layers = list(quant_layers(model))
    if not layers:
        raise ValueError("model has no quantized layer: call fedquant.quant.quantize_model first")
    for layer in layers:
        layer.set_bits(weight_bits, act_bits)
    return model


class LayerBits(tuple):
    """One ``(weight_bits, act_bits)`` setting per quantized layer, in definition order
    (:func:`quant_layers`): a per-layer draw (``strategy.sampling=per_layer``) or a mixed-precision
    assignment. A pinned layer still runs at its pinned bits (:meth:`QuantLayerMixin.effective_bits`)."""

    def __new__(cls, settings: Sequence[tuple[int | None, int | None]]) -> LayerBits:
        return super().__new__(cls, (tuple(s) for s in settings))


def set_layer_bits(model: nn.Module, settings: Sequence[tuple[int | None, int | None]]) -> nn.Module:
    """Switch quantized layer ``i`` of ``model`` to ``settings[i]`` (``ValueError`` unless there is
    exactly one setting per quantized layer)."""
    layers = list(quant_layers(model))
    if len(settings) != len(layers):
        raise ValueError(f"{len(settings)} per-layer settings for a model with {len(layers)} quantized layers: "
                         "allowed is one setting per quantized layer")
    for layer, (w, a) in zip(layers, settings, strict=True):
        layer.set_bits(check_bits(w, "weight_bits"), check_bits(a, "act_bits"))
    return model


def apply_bits(model: nn.Module, setting: tuple[int | None, int | None] | LayerBits) -> nn.Module:
    """:func:`set_layer_bits` for a :class:`LayerBits`, else :func:`set_bitwidth` for one setting."""
    return set_layer_bits(model, setting) if isinstance(setting, LayerBits) else set_bitwidth(model, *setting)


def get_bitwidth(model: nn.Module) -> tuple[int | None, int | None]:
    """The (weight, activation) bit-widths of the model's unpinned layers."""
    layers = [m for m in quant_layers(model) if not m.pinned] or list(quant_layers(model))
    return layers[0].weight_quantizer.bits, layers[0].input_quantizer.bits
