"""The base overrides, the search space and the objective checked before any trial runs.

Every bound and choice of the space (:func:`fedquant.tune.space.corners`) is composed with the
base overrides exactly as ``python -m fedquant`` composes them (:func:`fedquant.hydra_conf.compose_config`)
and checked by :func:`fedquant.experiment.config.validate`, so a typo'd key, a bad group option or
a value a rule refuses is one :class:`SetupError` line before the first trial starts. The Flower
server strategy's own options are taken as given (checking them needs Flower, which this
package never imports); a bad one fails the first trial.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from fedquant.experiment.config import ConfigError, validate
from fedquant.experiment.specs import evaluation_settings
from fedquant.federation.bitwidths import parse_setting, setting_name
from fedquant.hydra_conf import check_override_keys, compose_config

from .space import Space, as_overrides, corners

RESERVED = ("hydra.run.dir", "hydra.sweep.")  # set by the tuner, one run folder per trial


class SetupError(ValueError):
    """The study cannot start; ``str()`` is the one line shown to the user."""


def override_key(override: str) -> str:
    """``"+experiment=x"`` -> ``"experiment"``; ``"client.lr=0.1"`` -> ``"client.lr"``."""
    return override.split("=", 1)[0].lstrip("+~")


def metric_name(metric: str) -> str:
    """The setting's name as results.json spells it (``"4"`` -> ``"w4a4"``)."""
    try:
        return setting_name(parse_setting(metric, "--metric"))
    except ValueError as err:
        raise SetupError(str(err)) from None


def _check_overrides(overrides: Sequence[str], space: Space) -> None:
    for arg in overrides:
        if arg.startswith("-"):
            raise SetupError(f"{arg}: the overrides after -- are KEY=VALUE, GROUP=OPTION or +experiment=NAME; "
                             "flags are not passed to trials (each trial is one run)")
        key = override_key(arg)
        if key.startswith(RESERVED):
            raise SetupError(f"{arg}: the tuner sets each trial's run folder (--root DIR/trial_<n>)")
        if key in space:
            raise SetupError(f"{arg}: {key} is searched (--param), so it cannot also be set")
    try:
        check_override_keys([*overrides, *(f"{key}=0" for key in space)])
    except ConfigError as err:
        raise SetupError(str(err)) from None


def _compose(overrides: Sequence[str]) -> dict:
    try:
        cfg = compose_config(overrides)
    except ConfigError as err:
        raise SetupError(str(err)) from None
    except Exception as err:  # noqa: BLE001 - Hydra's own composition errors: the first line says what
        raise SetupError(f"{' '.join(overrides)}: {str(err).strip().splitlines()[0]}") from None
    strat = cfg.get("strategy", {})
    servers = {strat.get("server"): set(strat.get("server_options") or {})}  # Flower's options: as given
    try:
        validate(cfg, servers)
    except ConfigError as err:
        raise SetupError(f"{err} (with {' '.join(overrides)})" if overrides else str(err)) from None
    return cfg


def _check_metric(cfg: Mapping, metric: str) -> None:
    tested = [setting_name(s) for s in evaluation_settings(cfg)]
    if metric not in tested:
        raise SetupError(f"--metric {metric}: the runs do not test it; they test {', '.join(tested)} "
                         f"(eval.settings={cfg['eval']['settings']})")
    if not cfg["dataset"]["validation"]:
        raise SetupError(f"--metric {metric}: the objective is a validation accuracy, and dataset.validation=0 "
                         "leaves no validation images; give dataset.validation > 0")


def check_setup(overrides: Sequence[str], space: Space, metric: str) -> dict:
    """Raise :class:`SetupError` unless every corner of ``space`` composes with ``overrides``
    into a valid config that tests ``metric`` on a validation split; return the first corner's
    config (what the trials will run, up to the searched keys)."""
    _check_overrides(overrides, space)
    configs = [_compose([*overrides, *as_overrides(point)]) for point in corners(space)]
    for cfg in configs:
        _check_metric(cfg, metric)
    return configs[0]
