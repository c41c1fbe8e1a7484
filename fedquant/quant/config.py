"""Quantization configuration and the validation every entry point shares."""

from __future__ import annotations

import numbers
from dataclasses import dataclass

from ..fields import check_fields, key

MIN_BITS, MAX_BITS = 2, 16
GRANULARITIES = ("per_channel", "per_tensor")
SCALES = ("float", "pow2")  # float scales, or powers of two (s = 2^ceil(log2 s_float): grids.pow2_scale)
RANGE_TRACKING = ("running", "hindsight")
WEIGHT_RANGES = ("max", "mse")  # weight range at evaluation: max|w|, or the MSE-optimal clip of it
ACT_RANGES = ("minmax", "mse", "percentile")  # activation range at calibration


def check_bits(bits: object, what: str = "bits", allow_none: bool = True) -> int | None:
    """Return ``bits`` as an int in [2, 16] (or None for float), else raise ``ValueError``."""
    if bits is None and allow_none:
        return None
    if isinstance(bits, bool) or not isinstance(bits, numbers.Integral):
        if isinstance(bits, float) and bits.is_integer():
            bits = int(bits)
        else:
            allowed = f"an integer in {MIN_BITS}..{MAX_BITS}" + (" or None (float)" if allow_none else "")
            raise ValueError(f"{what}={bits!r} is not valid: allowed is {allowed}")
    if not MIN_BITS <= int(bits) <= MAX_BITS:
        raise ValueError(f"{what}={bits!r} is out of range: allowed is an integer in {MIN_BITS}..{MAX_BITS}")
    return int(bits)


def _bits(name: str, value: object) -> None:
    check_bits(value, name)


def check_choice(value: str, allowed: tuple[str, ...], what: str) -> str:
    """Raise ``ValueError`` naming ``what`` unless ``value`` is one of ``allowed``."""
    if value not in allowed:
        raise ValueError(f"{what}={value!r} is not valid: allowed are {', '.join(allowed)}")
    return value


@dataclass
class QuantConfig:
    """How a model is fake-quantized (uniform affine, arXiv 2106.08295 notation).

    Weights use a symmetric signed grid with scale ``s = max|w| / (2^(b-1) - 1)`` (per output
    channel by default). ``narrow_range=True`` uses the integer grid ``[-(2^(b-1)-1), 2^(b-1)-1]``
    (at 2 bits {-1, 0, 1}); ``False`` uses the full two's-complement grid ``[-2^(b-1), 2^(b-1)-1]``
    ({-2, -1, 0, 1}). Activations use an asymmetric unsigned per-tensor grid ``[0, 2^b - 1]`` over a
    range that always contains zero, so zero is exactly representable.

    ``weight_bits``/``act_bits`` are the initial bit-widths (``None`` = float); switch them at run
    time with :func:`fedquant.quant.set_bitwidth`. ``pin_first_last`` keeps the first and the last
    quantized layer at ``pinned_bits`` whenever quantization is on (common practice: 8 bits).
    ``scale="pow2"`` rounds every weight and activation scale up to a power of two,
    ``s = 2^ceil(log2 s_float)`` (:func:`fedquant.quant.grids.pow2_scale`, shift-only hardware);
    ``weight_granularity`` and ``scale`` are the initial :class:`~fedquant.quant.scheme.Scheme`,
    switched at run time with :func:`fedquant.quant.set_scheme` (the state keeps the shape of
    ``weight_granularity``).
    """

    weight_bits: int | None = key(8, "initial weight bit-width (None: float)", check=_bits)
    act_bits: int | None = key(8, "initial activation bit-width (None: float)", check=_bits)
    weight_granularity: str = key("per_channel", "per_channel | per_tensor", choices=GRANULARITIES)
    narrow_range: bool = key(True, "weights on [-(2^(b-1)-1), 2^(b-1)-1]; false: [-2^(b-1), 2^(b-1)-1]")
    pin_first_last: bool = key(False, "first and last layer (input image, logits' weights) at pinned_bits, as "
                                      "deployed; false: every layer at the evaluated bits (stricter)")
    pinned_bits: int = key(8, "the pinned layers' bit-width", check=lambda name, v: check_bits(v, name, allow_none=False))
    range_tracking: str = key("running", "activation range during training: running | hindsight",
                              choices=RANGE_TRACKING)
    momentum: float = key(0.1, "activation range momentum", gt=0.0, le=1.0)
    learned_ranges: bool = key(False, "LSQ-style learned ranges")
    scale: str = key("float", "weight and activation scales: float | pow2 (2^ceil(log2 s), for shift-only "
                              "integer hardware)", choices=SCALES)

    def __post_init__(self) -> None:
        for name in ("weight_bits", "act_bits", "pinned_bits"):  # 8.0 from a config file means 8
            value = getattr(self, name)
            if isinstance(value, float) and value.is_integer():
                setattr(self, name, int(value))
        check_fields(self)
