"""A quantizer scheme: the weight granularity and the kind of scale, switched at run time.

A scheme is what a class of integer hardware can run, next to its bit-widths::

    weights:      s_w = clip * max|w| / (2^(b-1) - 1)    per output channel, or per tensor
    activations:  s_x = (hi' - lo') / (2^b - 1)          per tensor
    scale=pow2:   s -> 2^ceil(log2 s)                    for both (fedquant.quant.grids.pow2_scale)

``per_channel``/``float`` is the default (today's quantizer). Like the bit-width it is a run-time
setting of one model, not a model property: :func:`set_scheme` switches every quantizer at once,
so a federated client can train its profile's scheme on the worker's cached model, and every
scheme shares the same state (a per-channel state runs per tensor with ``max(clip)``; see
:mod:`fedquant.quant.quantizers`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from torch import nn

from .config import GRANULARITIES, SCALES, check_choice
from .modules import quant_layers


@dataclass(frozen=True)
class Scheme:
    """``weight_granularity`` (per_channel | per_tensor) and ``scale`` (float | pow2)."""

    weight_granularity: str = "per_channel"
    scale: str = "float"

    def __post_init__(self) -> None:
        check_choice(self.weight_granularity, GRANULARITIES, "weight_granularity")
        check_choice(self.scale, SCALES, "scale")

    @property
    def pow2(self) -> bool:
        return self.scale == "pow2"

    @property
    def label(self) -> str:
        """``per_tensor-pow2``: how results at this scheme are named (``w4a4:per_tensor-pow2``)."""
        return f"{self.weight_granularity}-{self.scale}"

    @classmethod
    def of(cls, quantization: Mapping) -> Scheme:
        """The scheme of a ``quantization`` section (keys it lacks: the defaults)."""
        return cls(quantization.get("weight_granularity", cls.weight_granularity),
                   quantization.get("scale", cls.scale))

    def over(self, overrides: Mapping) -> Scheme:
        """This scheme with a device profile's ``weight_granularity`` / ``scale`` where it sets
        them (None or absent: inherited)."""
        return Scheme(overrides.get("weight_granularity") or self.weight_granularity,
                      overrides.get("scale") or self.scale)


def set_scheme(model: nn.Module, scheme: Scheme) -> nn.Module:
    """Switch every quantizer of ``model`` to ``scheme`` (``ValueError`` when a quantizer's state
    cannot run it: per channel on a per-tensor state). Returns ``model``."""
    layers = list(quant_layers(model))
    if not layers:
        raise ValueError("model has no quantized layer: call fedquant.quant.quantize_model first")
    for layer in layers:
        layer.weight_quantizer.set_scheme(scheme.weight_granularity, scheme.pow2)
        layer.input_quantizer.set_scheme(scheme.pow2)
    return model


def get_scheme(model: nn.Module) -> Scheme:
    """The scheme of the model's first quantized layer (:func:`set_scheme` sets them all)."""
    wq = next(iter(quant_layers(model))).weight_quantizer
    return Scheme(wq.granularity, "pow2" if wq.pow2 else "float")
