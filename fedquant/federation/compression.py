"""Compressed messages: a model state (or update) on a b-bit grid, packed into the bytes a real
device would send, with the exact payload size.

Each floating tensor ``x`` is split into groups (the whole tensor, or one group per output
channel ``x[c]`` for tensors of two or more dimensions with ``granularity="per_channel"``; a
one-dimensional tensor is always one group, since a scale and offset per entry would cost more
than the float). Per group, with ``m = min x`` and ``M = max x``, ``n = 2^b - 1`` levels::

    s = (M - m) / n                       (s = 1 when M = m: every entry is exactly m)
    q = clamp(round((x - m) / s), 0, n)   nearest: round half to even (torch.round)
                                          stochastic: floor((x - m) / s + u), u ~ U[0, 1)
    x_hat = m + s q

Stochastic rounding (QSGD, Alistarh et al. 2017) is unbiased: with ``t = (x - m) / s`` and
``f = t - floor(t)``, ``q = floor(t) + 1`` with probability ``f``, so ``E[q] = t`` and
``E[x_hat] = x`` (``t`` lies in ``[0, n]``, so the clamp never binds). Nearest rounding has error at
most ``s / 2`` per entry.

What travels per group: the integers packed at b bits (``ceil(numel * b / 8)`` bytes for the
whole tensor, low bit first), ``s`` and ``m`` as float32 (8 bytes). Non-floating tensors (e.g.
BatchNorm's ``num_batches_tracked``) travel as they are. :func:`payload_bytes` counts exactly the
bytes of the arrays :func:`encode_state` produces; Flower's own framing (protobuf, record keys)
is not counted, and both sides know the tensors' shapes (the architecture).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch

ROUNDINGS = ("stochastic", "nearest")
GRANULARITIES = ("per_tensor", "per_channel")
OFF = 32  # bits: no compression (float32 as today)
Q, SCALE, OFFSET = "|q", "|scale", "|offset"  # suffixes of a compressed tensor's arrays


@dataclass(frozen=True)
class Codec:
    """How a message is compressed: ``bits`` in 1..16, or 32 for float32 (off)."""

    bits: int = OFF
    rounding: str = "stochastic"
    granularity: str = "per_tensor"

    @property
    def off(self) -> bool:
        return self.bits == OFF


def pack_bits(q: torch.Tensor, bits: int) -> torch.Tensor:
    """Integers ``0 <= q < 2^bits`` as a uint8 tensor of ``ceil(q.numel() * bits / 8)`` bytes: entry
    ``i``'s bit ``j`` is stream bit ``i * bits + j``, and stream bit ``k`` is bit ``k % 8`` of byte
    ``k // 8``."""
    flat = q.reshape(-1).to(torch.int64)
    shifts = torch.arange(bits, dtype=torch.int64)
    stream = ((flat[:, None] >> shifts) & 1).reshape(-1)
    pad = (-stream.numel()) % 8
    stream = torch.cat([stream, stream.new_zeros(pad)]).reshape(-1, 8)
    return (stream << torch.arange(8, dtype=torch.int64)).sum(dim=1).to(torch.uint8)


def unpack_bits(packed: torch.Tensor, bits: int, numel: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: the first ``numel`` integers, as int64."""
    stream = ((packed.to(torch.int64)[:, None] >> torch.arange(8, dtype=torch.int64)) & 1).reshape(-1)
    stream = stream[: numel * bits].reshape(numel, bits)
    return (stream << torch.arange(bits, dtype=torch.int64)).sum(dim=1)


def _groups(x: torch.Tensor, granularity: str) -> torch.Tensor:
    """``x`` as rows, one per group."""
    if granularity == "per_channel" and x.dim() >= 2:
        return x.reshape(x.shape[0], -1)
    return x.reshape(1, -1)


def quantize(x: torch.Tensor, codec: Codec, generator: torch.Generator | None = None
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(q, s, m)``: the integers (int64, ``x``'s shape), and per group the float32 scale and
    offset (see the module's equations)."""
    rows = _groups(x.detach().to(torch.float32), codec.granularity)
    levels = 2 ** codec.bits - 1
    low, high = rows.min(dim=1).values, rows.max(dim=1).values
    scale = torch.where(high > low, (high - low) / levels, torch.ones_like(low))
    t = (rows - low[:, None]) / scale[:, None]
    if codec.rounding == "stochastic":
        u = torch.rand(t.shape, generator=generator, dtype=t.dtype)
        q = torch.floor(t + u)
    else:
        q = torch.round(t)
    q = q.clamp(0, levels).to(torch.int64)
    return q.reshape(x.shape), scale, low


def dequantize(q: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor, granularity: str) -> torch.Tensor:
    """``m + s q`` per group, float32, ``q``'s shape."""
    rows = _groups(q.to(torch.float32), granularity)
    return (offset[:, None] + scale[:, None] * rows).reshape(q.shape)


def encode_state(state: Mapping[str, torch.Tensor], codec: Codec, generator: torch.Generator | None = None
                 ) -> dict[str, torch.Tensor]:
    """The arrays that travel: for each floating tensor ``k``, ``k|q`` (packed uint8), ``k|scale``
    and ``k|offset`` (float32); other tensors as they are. With ``codec.off``, float32 copies."""
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if codec.off or not tensor.is_floating_point():
            out[name] = tensor.detach().to(torch.float32) if tensor.is_floating_point() else tensor.detach()
            continue
        q, scale, offset = quantize(tensor, codec, generator)
        out[name + Q] = pack_bits(q, codec.bits)
        out[name + SCALE], out[name + OFFSET] = scale, offset
    return out


def decode_state(arrays: Mapping[str, torch.Tensor], like: Mapping[str, torch.Tensor], codec: Codec
                 ) -> dict[str, torch.Tensor]:
    """Inverse of :func:`encode_state` up to the rounding: the state with ``like``'s keys, shapes
    and dtypes (the receiver knows the architecture)."""
    out: dict[str, torch.Tensor] = {}
    for name, reference in like.items():
        if name in arrays:
            out[name] = arrays[name].to(reference.dtype).reshape(reference.shape)
            continue
        q = unpack_bits(arrays[name + Q], codec.bits, reference.numel()).reshape(reference.shape)
        out[name] = dequantize(q, arrays[name + SCALE], arrays[name + OFFSET], codec.granularity).to(reference.dtype)
    return out


def payload_bytes(arrays: Mapping[str, torch.Tensor]) -> int:
    """The bytes of the arrays that travel (their raw contents; no framing)."""
    return sum(t.numel() * t.element_size() for t in arrays.values())


def expected_bytes(shapes: Mapping[str, tuple[int, ...]], codec: Codec, floating: Mapping[str, bool] | None = None,
                   raw_itemsize: int = 8) -> int:
    """The payload by hand: per floating tensor ``ceil(numel b / 8) + 8 * groups`` bytes (4 per
    tensor entry when off); non-floating tensors ``numel * raw_itemsize``."""
    total = 0
    for name, shape in shapes.items():
        numel = math.prod(shape)
        if floating is not None and not floating[name]:
            total += numel * raw_itemsize
        elif codec.off:
            total += 4 * numel
        else:
            groups = shape[0] if codec.granularity == "per_channel" and len(shape) >= 2 else 1
            total += math.ceil(numel * codec.bits / 8) + 8 * groups
    return total
