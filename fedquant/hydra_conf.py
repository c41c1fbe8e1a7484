"""The Hydra side of the config: the schema's defaults in Hydra's ConfigStore, and composition.

:func:`fedquant.experiment.schema.defaults` is stored as the config ``schema``, the first entry
of conf/config.yaml's defaults list, so every key's default is written once (in the schema) and
conf/ holds only the config groups' choices and the experiments. It is stored as a plain
mapping, not as a structured config: OmegaConf's own type errors are multi-line, and every bad
value must reach :func:`fedquant.experiment.config.validate` for its one-line message.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from .experiment.schema import defaults

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")


def register_schema() -> None:
    """Store the schema's defaults as the config ``schema`` (idempotent)."""
    ConfigStore.instance().store(name="schema", node=defaults())


def compose_config(overrides: Sequence[str] = ()) -> dict:
    """The experiment config for command-line style ``overrides``, composed from the schema and
    conf/ exactly as ``python -m fedquant`` does, as a plain dict."""
    register_schema()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=list(overrides))
    return OmegaConf.to_container(cfg, resolve=True)


register_schema()
