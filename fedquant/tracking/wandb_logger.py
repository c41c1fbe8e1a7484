"""Weights & Biases logging from the server process only (offline by default, syncable later)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

WANDB_ENV_MODES = ("online", "offline", "disabled", "dryrun", "run", "shared")  # what wandb accepts


class WandbSetupError(RuntimeError):
    """W&B cannot start with this environment or configuration; the message is one line."""


class WandbLogger:
    """One W&B run per experiment: metrics per evaluated round, a final table and the plots.

    ``mode=None`` picks ``online`` when ``WANDB_API_KEY`` is set, else ``offline`` (files under
    ``<output_dir>/wandb``, uploaded later with ``wandb sync``). Always call :meth:`finish`.
    """

    def __init__(self, config: Mapping, output_dir: Path, *, mode: str | None, project: str,
                 group: str | None, job_type: str, entity: str | None = None, tags: list | None = None) -> None:
        import wandb

        env_mode = os.environ.get("WANDB_MODE")
        if env_mode is not None and env_mode not in WANDB_ENV_MODES:
            raise WandbSetupError(f"WANDB_MODE={env_mode!r} in the environment is not valid: allowed are "
                                  f"{', '.join(WANDB_ENV_MODES)}; unset it or set logger.mode instead")
        self.mode = mode or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
        os.environ.setdefault("WANDB_SILENT", "true")
        self._wandb = wandb
        try:
            self.run = wandb.init(project=project, entity=entity, group=group, job_type=job_type, tags=tags,
                                  config=dict(config), mode=self.mode, dir=str(output_dir),
                                  reinit="finish_previous")
        except Exception as err:  # noqa: BLE001 - wandb raises many types (pydantic, usage, network)
            first = next((line for line in str(err).splitlines() if line.strip()), "")
            raise WandbSetupError(f"W&B could not start a {self.mode} run ({type(err).__name__}: {first[:200]}); "
                                  "check the WANDB_* environment variables and logger.*, or use logger=none") from None

    def log_round(self, server_round: int, evals: dict | None, train: dict | None,
                  per_profile: dict[str, dict[str, float]] | None = None) -> None:
        """``evals``: ``{"test": {setting: metrics}, "validation": {...}}`` -> ``eval/<setting>/<metric>``
        (test) and ``val/<setting>/<metric>``."""
        data: dict[str, float] = {}
        for split, prefix in (("test", "eval"), ("validation", "val")):
            for setting, metrics in (evals or {}).get(split, {}).items():
                for name, value in metrics.items():
                    data[f"{prefix}/{setting}/{name}"] = value
        if train:
            if train.get("loss") is not None:
                data["train/loss"] = train["loss"]
            data["train/failures"] = train.get("failures", 0)
            for name in ("uplink_bytes", "downlink_bytes", "cumulative_uplink_bytes"):
                if name in train:
                    data[f"comm/{name}"] = train[name]
            used = train.get("bits_used", {})
            for setting, steps in used.items():
                data[f"train/bits_used/{setting}"] = steps
            if used:
                data["train/weight_bits_histogram"] = self._bits_histogram(used)
        for profile, accs in (per_profile or {}).items():
            for setting, acc in accs.items():
                data[f"profile/{profile}/{setting}/accuracy"] = acc
        if data:
            self.run.log(data, step=server_round)

    def _bits_histogram(self, used: dict[str, int]):
        """Local steps per weight bit-width (float steps at 32) as a W&B histogram."""
        import numpy as np

        from ..federation.bitwidths import parse_setting

        bits = sorted({parse_setting(s)[0] or 32 for s in used})
        counts = [sum(n for s, n in used.items() if (parse_setting(s)[0] or 32) == b) for b in bits]
        edges = [b - 0.5 for b in bits] + [bits[-1] + 0.5]
        return self._wandb.Histogram(np_histogram=(np.array(counts), np.array(edges)))

    def finish(self, results: dict | None = None, plots: dict[str, Path] | None = None, failed: bool = False) -> None:
        """Log the final accuracy matrix and the plots (when given), then close the run."""
        wandb = self._wandb
        try:
            if results is not None:
                final_round = max(r["round"] for r in results["rounds"] if "eval" in r)
                evals = next(r["eval"] for r in results["rounds"] if r["round"] == final_round)
                table = wandb.Table(columns=["setting", "accuracy", "loss", "model_bytes"],
                                    data=[[s, m["accuracy"], m["loss"], results["model_bytes"].get(s)]
                                          for s, m in evals.items()])
                media: dict = {"final/accuracy_matrix": table}
                media.update({f"plots/{name}": wandb.Image(str(path)) for name, path in (plots or {}).items()})
                self.run.log(media)
                self.run.summary.update({f"final/{k}": v for k, v in results["final"].items()})
        finally:
            directory = Path(self.run.dir).parent
            self.run.finish(exit_code=1 if failed else 0)
            if self.mode == "offline":
                print(f"W&B offline run saved; upload it with: wandb sync {directory}")
