"""Quantization configuration and the validation every entry point shares."""

from __future__ import annotations

import numbers
from dataclasses import dataclass

MIN_BITS, MAX_BITS = 2, 16
GRANULARITIES = ("per_channel", "per_tensor")
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
    """

    weight_bits: int | None = 8
    act_bits: int | None = 8
    weight_granularity: str = "per_channel"
    narrow_range: bool = True
    pin_first_last: bool = False
    pinned_bits: int = 8
    range_tracking: str = "running"
    momentum: float = 0.1
    learned_ranges: bool = False

    def __post_init__(self) -> None:
        self.weight_bits = check_bits(self.weight_bits, "weight_bits")
        self.act_bits = check_bits(self.act_bits, "act_bits")
        self.pinned_bits = check_bits(self.pinned_bits, "pinned_bits", allow_none=False)
        check_choice(self.weight_granularity, GRANULARITIES, "weight_granularity")
        check_choice(self.range_tracking, RANGE_TRACKING, "range_tracking")
        if not 0.0 < float(self.momentum) <= 1.0:
            raise ValueError(f"momentum={self.momentum!r} is out of range: allowed is 0 < momentum <= 1")
