"""Config keys as dataclass fields: each key's type, default, allowed values and bounds live in one
``field`` (:func:`key`), and one checker (:func:`check_key`) turns a bad value into one line.

The experiment schema (:mod:`fedquant.experiment.schema`) is built from such fields, and so are
the option objects of the core that a config section becomes (``QuantConfig``, ``EvalProtocol``),
so an allowed value is written once and checked by the same code wherever it enters.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

REQUIRED = "???"  # OmegaConf's MISSING: a key whose value a config group sets (e.g. dataset.name)


def key(default: Any = REQUIRED, doc: str = "", *, choices: Sequence[str] | None = None, ge: float | None = None,
        gt: float | None = None, le: float | None = None, lt: float | None = None,
        check: Callable[[str, Any], Any] | None = None) -> Any:
    """A config key: its ``default`` (``REQUIRED``: set by a config group; a list or dict default
    is copied per instance), a one-line ``doc``, the allowed ``choices`` or bounds, and an extra
    ``check(name, value)`` that replaces the type and range checks and raises ``ValueError`` with
    the one-line message."""
    meta = {"doc": doc, "choices": tuple(choices) if choices is not None else None, "ge": ge, "gt": gt, "le": le,
            "lt": lt, "check": check}
    if default is REQUIRED:
        return dataclasses.field(default=REQUIRED, metadata=meta)
    if isinstance(default, list | dict):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _number_rule(kind: str, meta: Mapping) -> str:
    lo = f"> {meta['gt']}" if meta["gt"] is not None else f">= {meta['ge']}" if meta["ge"] is not None else None
    hi = f"< {meta['lt']}" if meta["lt"] is not None else f"<= {meta['le']}" if meta["le"] is not None else None
    noun = "an integer" if kind == "integer" else "a number"
    if kind == "integer" and meta["ge"] is not None and meta["le"] is not None:
        return f"{noun} in {meta['ge']}..{meta['le']}"
    bounds = " and ".join(r for r in (lo, hi) if r)
    return f"{noun} {bounds}" if bounds else noun


def _in_bounds(value: float, meta: Mapping) -> bool:
    return ((meta["ge"] is None or value >= meta["ge"]) and (meta["gt"] is None or value > meta["gt"])
            and (meta["le"] is None or value <= meta["le"]) and (meta["lt"] is None or value < meta["lt"]))


def _base_types(annotation: Any) -> tuple[Any, ...]:
    """The types a value may have: ``str | None`` -> (str,), ``list[str]`` -> (list,)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return tuple(typing.get_origin(a) or a for a in typing.get_args(annotation) if a is not type(None))
    return (typing.get_origin(annotation) or annotation,)


def check_key(name: str, value: Any, f: dataclasses.Field, annotation: Any) -> Any:
    """Check ``value`` of key ``name`` against its field; return it (ints given for floats stay
    as given) or raise ``ValueError`` with the one-line message: the key, the value, what is allowed."""
    meta = f.metadata
    types = _base_types(annotation)
    if meta.get("check") is not None:  # the key's own check owns its values (and a scalar's type)
        if list in types and (not isinstance(value, Sequence) or isinstance(value, str)):
            raise ValueError(f"{name}={_shown(value)} is not valid: allowed is a list")
        meta["check"](name, value)
        return value
    if value is None and (type(None) in typing.get_args(annotation) or annotation is Any):
        return value
    if bool in types:
        if not isinstance(value, bool):
            raise ValueError(f"{name}={_shown(value)} is not valid: allowed are true, false")
    elif int in types:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not _in_bounds(value, meta):
            raise ValueError(f"{name}={_shown(value)} is not valid: allowed is {_number_rule('integer', meta)}")
    elif float in types:
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
                or not _in_bounds(value, meta):
            raise ValueError(f"{name}={_shown(value)} is not valid: allowed is {_number_rule('number', meta)}")
    elif meta.get("choices") is not None:
        if value not in meta["choices"]:
            raise ValueError(f"{name}={_shown(value)} is not valid: allowed are {', '.join(map(str, meta['choices']))}")
    elif str in types and not isinstance(value, str):
        raise ValueError(f"{name}={value!r} is not valid: allowed is a string")
    elif list in types and (not isinstance(value, Sequence) or isinstance(value, str)):
        raise ValueError(f"{name}={value!r} is not valid: allowed is a list")
    elif dict in types and not isinstance(value, Mapping):
        raise ValueError(f"{name}={value!r} is not valid: allowed is a mapping")
    return value


def _shown(value: Any) -> str:
    """A value as the config file writes it: null, true/false, else Python's repr."""
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else repr(value)


def check_fields(obj: Any, prefix: str = "") -> None:
    """Check every field of the dataclass instance ``obj`` (its ``__post_init__`` calls this)."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        check_key(prefix + f.name, getattr(obj, f.name), f, hints[f.name])
