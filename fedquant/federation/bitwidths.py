"""Bit-width settings, their parsing, and seeded sampling: the schema clients and strategies share.

A *setting* is a (weight_bits, act_bits) pair, ``None`` meaning float. It is written ``"fp"``,
``"w4a4"``, ``"w4a8"``, or as a bare integer ``b`` meaning ``wbab``.

Sampling modes (``strategy.sampling``): ``per_step`` draws one setting for the whole model before
every local step; ``per_layer`` draws, before every step, each quantized layer's setting
independently and uniformly from the same set (a :class:`~fedquant.quant.LayerBits`), so the
model learns to run any per-layer assignment a server may choose under a byte budget; pinned
layers keep their pinned bits; ``per_round`` draws one setting per client and round; ``fixed``
trains at the one setting given.
"""

from __future__ import annotations

import re

import numpy as np

from ..quant.config import MAX_BITS, MIN_BITS, check_bits
from ..quant.modules import LayerBits
from ..streams import Stream, stream_rng

Setting = tuple[int | None, int | None]
FLOAT: Setting = (None, None)
SAMPLING_MODES = ("per_step", "per_layer", "per_round", "fixed")
_PATTERN = re.compile(r"w(\d+)a(\d+)")


def parse_setting(value: object, what: str = "setting") -> Setting:
    """``"fp"`` -> (None, None); ``"w4a8"`` -> (4, 8); ``4`` or ``"4"`` -> (4, 4)."""
    text = str(value).strip().lower()
    if text in ("fp", "float", "none", "fp32"):
        return FLOAT
    if text.isdigit():
        b = check_bits(int(text), what, allow_none=False)
        return b, b
    match = _PATTERN.fullmatch(text)
    if not match:
        raise ValueError(f"{what}={value!r} is not valid: allowed is 'fp', 'wXaY' (e.g. w4a4, w4a8) "
                         f"or an integer bit-width, with bits in {MIN_BITS}..{MAX_BITS}")
    w, a = int(match[1]), int(match[2])
    if not (MIN_BITS <= w <= MAX_BITS and MIN_BITS <= a <= MAX_BITS):
        raise ValueError(f"{what}={value!r} is out of range: allowed is an integer in {MIN_BITS}..{MAX_BITS} for w and a")
    return w, a


def setting_name(setting: Setting) -> str:
    w, a = setting
    if w is None and a is None:
        return "fp"
    return f"w{w if w is not None else 'fp'}a{a if a is not None else 'fp'}"


def parse_settings(values: object, what: str) -> list[Setting]:
    """A non-empty list of settings without duplicates, in the given order."""
    if isinstance(values, (str, int)):
        values = [values]
    out = []
    for i, v in enumerate(values):
        s = parse_setting(v, f"{what}[{i}]")
        if s not in out:
            out.append(s)
    if not out:
        raise ValueError(f"{what} is empty: allowed is a list of settings like [fp, w8a8, w4a4]")
    return out


def encode(settings: list[Setting]) -> list[str]:
    """Settings as the strings that travel in Flower ConfigRecords."""
    return [setting_name(s) for s in settings]


def setting_source(sampling: str, settings: list[Setting], seed: int, layers: int | None = None):
    """What a client calls before every step: a seeded draw from ``settings`` for ``per_step``, a
    :class:`~fedquant.quant.LayerBits` of ``layers`` independent draws for ``per_layer``, else the
    one setting it was sent."""
    if sampling == "per_step":
        return BitSampler(settings, stream_rng(seed, Stream.STEP_SETTING))
    if sampling == "per_layer":
        if not layers:
            raise ValueError("sampling='per_layer' needs the model's number of quantized layers (layers=...)")
        return LayerSampler(settings, stream_rng(seed, Stream.STEP_SETTING), layers)
    fixed = settings[0]
    return lambda: fixed


class BitSampler:
    """Draws settings uniformly from a set with its own seeded generator (reproducible anywhere)."""

    def __init__(self, settings: list[Setting], rng: np.random.Generator) -> None:
        self.settings = settings
        self.rng = rng

    def __call__(self) -> Setting:
        return self.settings[int(self.rng.integers(len(self.settings)))]


class LayerSampler(BitSampler):
    """Draws each of ``layers`` layers' setting uniformly and independently from a set."""

    def __init__(self, settings: list[Setting], rng: np.random.Generator, layers: int) -> None:
        super().__init__(settings, rng)
        self.layers = layers

    def __call__(self) -> LayerBits:
        return LayerBits([self.settings[int(i)] for i in self.rng.integers(len(self.settings), size=self.layers)])
