"""Every key of an experiment config against its field in :mod:`fedquant.experiment.schema`: present,
of the right type, allowed, within bounds; an unknown key named with the nearest known one."""

from __future__ import annotations

import dataclasses
import difflib
import typing
from collections.abc import Collection, Mapping
from typing import Any

from ..fields import REQUIRED, check_key
from ..quant import QuantConfig
from . import schema


class ConfigError(ValueError):
    """A bad config value; ``str()`` is the one line shown to the user."""


def get(cfg: Mapping, dotted: str) -> Any:
    """``cfg[a][b]`` for ``"a.b"``."""
    node: Any = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


def _unknown(name: str, known: Collection[str], prefix: str) -> ConfigError:
    close = difflib.get_close_matches(name, list(known), n=1)
    hint = f"did you mean {prefix}{close[0]}? " if close else ""
    return ConfigError(f"{prefix}{name} is not a config key: {hint}allowed under "
                       f"{prefix.rstrip('.') or 'the top level'} are {', '.join(sorted(known))}")


def check_section(section: Any, cls: type, prefix: str = "", elsewhere: Collection[str] = (),
                  excluded: Collection[str] = (), partial: bool = False) -> None:
    """Every field of the dataclass ``cls`` present in ``section`` with a valid value (nested
    sections recursively; with ``partial``, keys with a default may be left out), and no key
    ``cls`` does not know. ``elsewhere``: keys of ``cls`` checked by another function; ``excluded``:
    fields of ``cls`` that are not config keys (a run-time value)."""
    if not isinstance(section, Mapping):
        raise ConfigError(f"{prefix.rstrip('.')}={section!r} is not valid: allowed is a mapping")
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.name not in elsewhere and f.name not in excluded]
    for f in fields:
        name = prefix + f.name
        if partial and f.name not in section and f.default != REQUIRED:
            continue
        if f.name not in section or section[f.name] == REQUIRED:
            raise ConfigError(_missing(name, f))
        if dataclasses.is_dataclass(f.default_factory):
            check_section(section[f.name], f.default_factory, name + ".")
            continue
        try:
            check_key(name, section[f.name], f, hints[f.name])
        except ValueError as err:
            raise ConfigError(str(err)) from None
    known = {f.name for f in fields} | set(elsewhere)
    for k in section:
        if k not in known:
            raise _unknown(k, known, prefix)


def _missing(name: str, f: dataclasses.Field) -> str:
    if f.default == REQUIRED:
        group = name.split(".")[0]
        return (f"{name} is missing: it is set by the {group} config group (conf/{group}/), e.g. {group}=<option>"
                if "[" not in name else f"{name} is missing: it has no default, give it")
    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    return f"{name} is missing: add it, e.g. {name}={default!r} (its default)"


def _check_variant(cfg: Mapping, section: str) -> None:
    """A section whose keys depend on its ``name`` (the config group's option)."""
    name_key, names, variants = schema.VARIANTS[section]
    node = cfg.get(section)
    if not isinstance(node, Mapping) or node.get(name_key, REQUIRED) == REQUIRED:
        raise ConfigError(f"{section}.{name_key} is missing: choose one with {section}=<option> (see conf/{section}/)")
    if node[name_key] not in names:
        raise ConfigError(f"{section}.{name_key}={node[name_key]!r} is not valid: allowed are {', '.join(names)}")
    check_section(node, variants[node[name_key]], section + ".", elsewhere=(name_key,))


def _section_fields(cls: type) -> dict[str, Any]:
    """A section's fields: name -> its nested section's fields, or None for a key (a leaf)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        out[f.name] = _section_fields(f.default_factory) if dataclasses.is_dataclass(f.default_factory) else None
    return out


def key_tree() -> dict[str, Any]:
    """Every key of the schema as a tree (nested dicts; None at a key): the variant sections hold
    every variant's keys, ``quantization`` QuantConfig's."""
    tree = _section_fields(schema.ExperimentConfig)
    for section, (name_key, _, variants) in schema.VARIANTS.items():
        tree[section] = {name_key: None}
        for cls in variants.values():
            tree[section].update(_section_fields(cls))
    tree["quantization"] = {k: v for k, v in _section_fields(QuantConfig).items() if k not in schema.RUN_TIME_BITS}
    return tree


def check_key_name(dotted: str, tree: Mapping[str, Any] | None = None) -> None:
    """Raise ``ConfigError`` (naming the nearest known key) unless ``dotted`` is a key of the schema
    or lies inside one (``strategy.server_options.mu``: a mapping's own entries are its key's
    business)."""
    node: Mapping[str, Any] | None = key_tree() if tree is None else tree
    prefix = ""
    for part in dotted.split("."):
        if node is None:  # inside a key's value
            return
        if part not in node:
            raise _unknown(part, node, prefix)
        node, prefix = node[part], f"{prefix}{part}."


def check_keys(cfg: Mapping) -> None:
    """Every key of the schema present and valid, no unknown key."""
    check_section(cfg, schema.ExperimentConfig, elsewhere=("partition", "quantization", "logger"))
    for section in schema.VARIANTS:
        _check_variant(cfg, section)
    check_section(cfg.get("quantization", REQUIRED), QuantConfig, "quantization.", excluded=schema.RUN_TIME_BITS)
