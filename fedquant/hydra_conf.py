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
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from .experiment.config import ConfigError
from .experiment.keys import check_key_name
from .experiment.schema import defaults

PACKAGE = Path(__file__).resolve().parent


def config_dir(package: Path = PACKAGE) -> Path:
    """conf/: inside the installed package (``pip install .`` ships it as ``fedquant/conf``, see
    setup.py), else at the top of the source tree (a checkout or an editable install)."""
    for candidate in (package / "conf", package.parent / "conf"):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"fedquant's Hydra configs are missing: no conf/config.yaml in {package} or "
                            f"{package.parent}; reinstall fedquant (pip install .)")


CONFIG_DIR = str(config_dir())


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


def check_override_keys(args: Sequence[str]) -> None:
    """Raise ``ConfigError`` for a command-line override of a key the schema does not know
    (``num_round=3`` -> "did you mean num_rounds?"), before Hydra's own "To append to your config
    use +num_round=3" points the wrong way. Flags, ``+key``/``~key``, ``hydra.*``, config groups
    and anything Hydra cannot parse are left to Hydra."""
    groups = {path.name for path in Path(CONFIG_DIR).iterdir() if path.is_dir()}
    candidates = [arg for arg in args if "=" in arg and not arg.startswith("-")]
    try:
        overrides = OverridesParser.create().parse_overrides(candidates)
    except Exception:  # noqa: BLE001 - a malformed override: Hydra's own message says what is wrong
        return
    for override in overrides:
        key = override.key_or_group
        if override.is_add() or override.is_delete() or override.package or key.split(".")[0] in {"hydra"}:
            continue
        if key.split("/")[0] in groups:
            continue
        check_key_name(key)


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
