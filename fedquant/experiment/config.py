"""Check a whole experiment config before anything starts (no Ray, no data loading).

Every key is checked against its field in :mod:`fedquant.experiment.schema` (type, allowed values,
bounds; :mod:`fedquant.experiment.keys`), then the cross-key rules of
:mod:`fedquant.experiment.rules` run in order. Every problem is reported as one
:class:`ConfigError` line: the key, the bad value, what is allowed.
"""

from __future__ import annotations

import copy
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from ..fields import REQUIRED
from . import schema
from .keys import ConfigError, check_keys
from .rules import MACHINE_RULES, RULES


def validate(cfg: Mapping, servers: Mapping[str, Collection[str]], rules: Sequence = RULES) -> None:
    """Raise :class:`ConfigError` for the first problem found in ``cfg``: first every key
    (:func:`check_keys`), then the cross-key ``rules`` (:data:`RULES`).

    ``servers`` maps each Flower server strategy name to the ``strategy.server_options`` it
    accepts (``strategies.server_options()``; passed in so this module stays free of Flower).
    """
    check_keys(cfg)
    for rule in rules:
        rule(cfg, servers)


def with_overrides(cfg: Mapping, overrides: Mapping[str, Any],
                   servers: Mapping[str, Collection[str]] | None = None) -> dict:
    """A copy of ``cfg`` with dotted keys replaced (``{"eval.ptq": "adaround"}``), checked as a
    whole by :func:`validate`. Keys that a config written by an older version lacks take the
    schema's defaults (:func:`complete`: today's protocol). Without ``servers`` (offline tools,
    no Flower) the run's own server strategy and options are taken as checked when it ran."""
    out = complete(cfg)
    if servers is None:
        strat = out.get("strategy", {})
        servers = {strat.get("server"): set(strat.get("server_options", {}))}
    for dotted, value in overrides.items():
        *parents, last = dotted.split(".")
        node = out
        for part in parents:
            node = node.get(part) if isinstance(node, Mapping) else None
        if not isinstance(node, Mapping) or last not in node:
            raise ConfigError(f"{dotted} is not a config key")
        node[last] = value
    validate(out, servers, [r for r in RULES if r not in MACHINE_RULES])  # paths of the machine it ran on
    return out


# keys added after runs were written whose default is not what those runs did: {key: old behaviour}
LEGACY = {"eval.integer_bias": False}  # runs before it were evaluated with float biases


def complete(cfg: Mapping, legacy: bool = False) -> dict:
    """A copy of a run's config with the keys it lacks (written by an older version) set to the
    schema's defaults, i.e. today's protocol; with ``legacy``, keys in :data:`LEGACY` take what
    that version did instead (to continue a run exactly). Nothing else is checked."""
    out = copy.deepcopy(dict(cfg))
    if legacy:
        for dotted, value in LEGACY.items():
            *parents, last = dotted.split(".")
            node = out
            for part in parents:
                node = node.get(part) if isinstance(node, dict) else None
            if isinstance(node, dict) and last not in node:
                node[last] = value
    return _fill(out, schema.defaults())


def _fill(cfg: dict, defaults: Mapping) -> dict:
    for k, v in defaults.items():
        if k not in cfg and v != REQUIRED:
            cfg[k] = copy.deepcopy(v)
        elif isinstance(v, Mapping) and isinstance(cfg.get(k), dict):
            _fill(cfg[k], v)
    return cfg
