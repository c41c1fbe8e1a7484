"""``python -m fedquant [overrides]``: the Hydra command line."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from fedquant.data import DatasetError
from fedquant.validation import ConfigError

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def _hydra_main(cfg: DictConfig) -> dict | None:
    from fedquant.app import run_experiment

    container = OmegaConf.to_container(cfg, resolve=True)
    try:
        return run_experiment(container, HydraConfig.get().runtime.output_dir)
    except (ConfigError, DatasetError) as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2 if isinstance(err, ConfigError) else 1)


def main() -> None:
    _hydra_main()


if __name__ == "__main__":
    main()
