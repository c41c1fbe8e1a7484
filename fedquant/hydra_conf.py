"""The Hydra side of the config: the schema's defaults in Hydra's ConfigStore, and composition.

:func:`fedquant.experiment.schema.defaults` is stored as the config ``schema``, the first entry
of conf/config.yaml's defaults list, so every key's default is written once (in the schema) and
conf/ holds only the config groups' choices and the experiments. It is stored as a plain
mapping, not as a structured config: OmegaConf's own type errors are multi-line, and every bad
value must reach :func:`fedquant.experiment.config.validate` for its one-line message.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from .experiment.config import ConfigError
from .experiment.schema import defaults

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")


def register_schema() -> None:
    """Store the schema's defaults as the config ``schema`` (idempotent)."""
    ConfigStore.instance().store(name="schema", node=defaults())


GROUPS = ("dataset", "model", "strategy", "partition", "logger")  # groups whose options set <group>.name


def check_group_choices(cfg: Mapping, choices: Mapping[str, str | None]) -> None:
    """Raise ``ConfigError`` when ``<group>.name`` was changed without its config group: the
    group's option sets the keys that go with the name (``dataset=fmnist`` brings the CNN, its
    learning rate and hold-out; ``dataset.name=fmnist`` alone would keep the digits ones)."""
    for group in GROUPS:
        chosen, name = choices.get(group), cfg.get(group, {}).get("name")
        option = Path(CONFIG_DIR) / group / f"{name}.yaml"  # an unknown name: the validator says what is allowed
        if chosen is not None and name is not None and name != chosen and option.is_file():
            raise ConfigError(f"{group}.name={name} keeps the settings of {group}={chosen} (the {group} group sets "
                              f"the keys that go with its name): use {group}={name} instead")


def compose_config(overrides: Sequence[str] = ()) -> dict:
    """The experiment config for command-line style ``overrides``, composed from the schema and
    conf/ exactly as ``python -m fedquant`` does, as a plain dict; a group's ``name`` changed
    without the group is a ``ConfigError`` (:func:`check_group_choices`)."""
    register_schema()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=list(overrides), return_hydra_config=True)
    choices = OmegaConf.to_container(cfg.hydra.runtime.choices)
    out = OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True)
    check_group_choices(out, choices)
    return out


register_schema()
