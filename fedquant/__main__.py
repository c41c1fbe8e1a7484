"""``python -m fedquant [overrides]``: the Hydra command line (``-m`` for sweeps)."""

from __future__ import annotations

import os
import shutil
import sys
import traceback
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from fedquant.data import DatasetError
from fedquant.experiment.config import ConfigError
from fedquant.hydra_conf import CONFIG_DIR, check_group_choices, check_override_keys
from fedquant.runtime.checkpoint import CheckpointError, list_checkpoints
from fedquant.runtime.simulation import RayUnreachable
from fedquant.tracking.wandb_logger import WandbSetupError
from strategies import DivergenceError, FlowerMismatch, TooFewReplies

# errors that end a run with one line (exit 1; config errors exit 2) instead of a traceback
RUN_ERRORS = (ConfigError, DatasetError, CheckpointError, DivergenceError, TooFewReplies, RayUnreachable,
              WandbSetupError, FlowerMismatch)
CONFIG_ERRORS = (ConfigError, WandbSetupError)  # exit 2; the others exit 1

def remove_if_empty(run_dir: Path) -> bool:
    """Delete a run folder that holds nothing but Hydra's ``.hydra`` record and empty files (a
    run stopped before it started): no empty folders for the report to list. True if deleted."""
    if not run_dir.is_dir():
        return False
    for entry in run_dir.iterdir():
        if entry.name != ".hydra" and not (entry.is_file() and entry.stat().st_size == 0):
            return False
    shutil.rmtree(run_dir)
    return True


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def _hydra_main(cfg: DictConfig) -> None:
    from fedquant.app import run_experiment

    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    container = OmegaConf.to_container(cfg, resolve=True)
    group = Path(hydra_cfg.sweep.dir).name if multirun else None
    try:
        check_group_choices(container, hydra_cfg.runtime.choices)
        run_experiment(container, hydra_cfg.runtime.output_dir, group=group)
    except RUN_ERRORS as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        message = f"error: {err}"
        kept = list_checkpoints(Path(hydra_cfg.runtime.output_dir))
        if isinstance(err, (DivergenceError, TooFewReplies)) and kept:
            message += f" [last good checkpoint: {kept[-1]}; continue with resume_from={kept[-1].parent}]"
        print(message, file=sys.stderr)
        remove_if_empty(Path(hydra_cfg.runtime.output_dir))
        if multirun:  # one bad job must not stop the sweep
            return None
        sys.exit(2 if isinstance(err, CONFIG_ERRORS) else 1)
    except Exception as err:  # noqa: BLE001 - in a sweep, report and go on to the next job
        if not multirun:
            raise
        job = hydra_cfg.job.num
        log = Path(hydra_cfg.runtime.output_dir) / "error.txt"
        log.write_text(traceback.format_exc())
        print(f"error: sweep job {job} ({' '.join(hydra_cfg.overrides.task)}) failed: "
              f"{type(err).__name__}: {err}; traceback in {log}", file=sys.stderr)
        return None


def main() -> None:
    try:
        check_override_keys(sys.argv[1:])
    except ConfigError as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    _hydra_main()


if __name__ == "__main__":
    main()
