"""What a valid training reply looks like, and the first thing wrong with one that is not.

The server runs these checks on every reply before anything reads it (``strategies/validation.py``),
so a malformed reply, from a simulated attacker (:mod:`fedquant.federation.attacks`) or a real
SuperNode, becomes that client's failure with a reason instead of a crash or a poisoned aggregate:

- arrays: exactly the arrays that were sent, each with the shape it was sent with and the dtype
  a client sends (float32 for floating entries: a client's model, whatever precision the server's
  optimizer keeps; a sub-model client's: the global arrays cut to its width; with a compressed
  uplink: the arrays :func:`~fedquant.federation.compression.encode_state` makes of them,
  :func:`encoded_layout`); without the sub-model's template, each array must fit inside the
  global one (same rank, no larger dimension);
- every floating value finite;
- metrics: exactly :data:`~fedquant.federation.protocol.REPLY_METRICS`, the example count a
  positive integer no larger than the client's partition, the loss and times finite numbers, the
  bit histogram a list of non-negative integers of the fixed length.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping

import numpy as np

from . import protocol as P
from .compression import OFFSET, SCALE, Codec, Q

Layout = dict[str, tuple[tuple[int, ...], str]]  # array name -> (shape, numpy dtype name)
BITS_HIST_LENGTH = len(P.encode_bits(Counter()))


def dtype_name(array) -> str:
    """The numpy dtype name of a numpy array or a torch tensor (``float32``, ``uint8``, ...)."""
    dtype = array.dtype
    return dtype.name if isinstance(dtype, np.dtype) else str(dtype).removeprefix("torch.")


def layout(arrays: Mapping) -> Layout:
    """Shapes and dtypes of numpy arrays, torch tensors or Flower Arrays."""
    return {k: (tuple(int(d) for d in a.shape), a.dtype if isinstance(a.dtype, str) else dtype_name(a))
            for k, a in arrays.items()}


def encoded_layout(plain: Layout, codec: Codec) -> Layout:
    """The layout of ``encode_state(state, codec)`` for a state of layout ``plain``: per floating
    tensor its packed integers (``ceil(numel b / 8)`` bytes) and a float32 scale and offset per
    group; float32 copies when the codec is off; other tensors as they are."""
    out: Layout = {}
    for name, (shape, dtype) in plain.items():
        if not np.issubdtype(np.dtype(dtype), np.floating):
            out[name] = (shape, dtype)
        elif codec.off:
            out[name] = (shape, "float32")
        else:
            groups = shape[0] if codec.granularity == "per_channel" and len(shape) >= 2 else 1
            out[name + Q] = ((math.ceil(math.prod(shape) * codec.bits / 8),), "uint8")
            out[name + SCALE] = out[name + OFFSET] = ((groups,), "float32")
    return out


def _fits(shape: tuple[int, ...], bound: tuple[int, ...]) -> bool:
    return len(shape) == len(bound) and all(1 <= s <= b for s, b in zip(shape, bound, strict=True))


def arrays_problem(arrays: Mapping[str, np.ndarray], expected: Layout | None, bound: Layout | None = None) -> str | None:
    """What is wrong with a reply's ``arrays`` (None: nothing): against the ``expected`` layout
    exactly, or, given only ``bound`` (the global layout, for a sub-model whose template is
    unknown), each array fitting inside it; then every floating value finite."""
    reference = expected if expected is not None else bound
    if reference is not None:
        if missing := [k for k in reference if k not in arrays]:
            return f"missing array {missing[0]!r}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
        if extra := [k for k in arrays if k not in reference]:
            return f"unexpected array {extra[0]!r}" + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else "")
        for name, array in arrays.items():
            shape, dtype = reference[name]
            if dtype_name(array) != dtype:
                return f"array {name!r} has dtype {dtype_name(array)}, where {dtype} is expected"
            if expected is not None and tuple(array.shape) != shape:
                return f"array {name!r} has shape {tuple(array.shape)}, where {shape} was sent"
            if expected is None and not _fits(tuple(array.shape), shape):
                return f"array {name!r} has shape {tuple(array.shape)}, which does not fit inside the global {shape}"
    for name, array in arrays.items():
        if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
            return f"non-finite values (NaN/Inf) in array {name!r}"
    return None


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def metrics_problem(metrics: Mapping, partition_size: int | None) -> str | None:
    """What is wrong with a reply's metric record (None: nothing)."""
    keys = set(metrics)
    if missing := [k for k in P.REPLY_METRICS if k not in keys]:
        return f"metric {missing[0]!r} missing"
    if extra := sorted(keys - set(P.REPLY_METRICS)):
        return f"unexpected metric {extra[0]!r}"
    n = metrics[P.NUM_EXAMPLES]
    if not _integer(n) or n <= 0:
        return f"{P.NUM_EXAMPLES}={n!r} is not a positive integer"
    if partition_size is not None and n > partition_size:
        return f"{P.NUM_EXAMPLES}={n} exceeds the client's partition size ({partition_size})"
    loss = metrics[P.TRAIN_LOSS]
    if not isinstance(loss, (int, float)) or isinstance(loss, bool):
        return f"{P.TRAIN_LOSS}={loss!r} is not a number"
    if not math.isfinite(loss):
        return f"non-finite {P.TRAIN_LOSS}={loss}"
    for key in (P.TRAIN_SECONDS, P.TRAIN_CPU_SECONDS):
        if not _number(metrics[key]) or metrics[key] < 0:
            return f"{key}={metrics[key]!r} is not a non-negative number"
    for key in (P.PARTITION, P.NODE_INDEX, P.TRACKED_STEPS):
        if not _integer(metrics[key]):
            return f"{key}={metrics[key]!r} is not an integer"
    if metrics[P.TRACKED_STEPS] < 0:
        return f"{P.TRACKED_STEPS}={metrics[P.TRACKED_STEPS]} is negative"
    hist = metrics[P.BITS_HIST]
    if not isinstance(hist, list) or len(hist) != BITS_HIST_LENGTH or not all(_integer(h) and h >= 0 for h in hist):
        return f"{P.BITS_HIST} is not a list of {BITS_HIST_LENGTH} non-negative integers"
    return None


def oscillations_problem(record: Mapping[str, np.ndarray], model: Layout | None) -> str | None:
    """What is wrong with a reply's oscillation record (``"<weight>|count"`` and ``"<weight>|intsum"``
    arrays shaped like the weight in the ``model`` layout)."""
    for key, array in record.items():
        name, _, kind = key.rpartition("|")
        if kind not in ("count", "intsum") or (model is not None and name not in model):
            return f"unexpected oscillation array {key!r}"
        if model is not None and tuple(array.shape) != model[name][0]:
            return f"oscillation array {key!r} has shape {tuple(array.shape)}, where {model[name][0]} was sent"
        if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
            return f"non-finite values (NaN/Inf) in oscillation array {key!r}"
    return None
