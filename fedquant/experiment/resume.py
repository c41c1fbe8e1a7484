"""Finding and checking the checkpoint a run continues from."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from ..runtime.checkpoint import CheckpointError, find_checkpoint, load_checkpoint

# keys that may change between a checkpointed run and its resumption
RESUMABLE_CHANGES = ("resume", "resume_from", "quiet", "logger", "simulation", "checkpoint", "num_rounds", "faults")


def load_resume(cfg: Mapping, output_dir: Path, runs_root: Path | None) -> dict | None:
    """The checkpoint to continue from (``resume_from``, or with ``resume=true`` the newest under
    ``runs_root``), its ``path`` added; None when the run starts afresh. Raises
    :class:`CheckpointError` when it was written with a config that differs in a key outside
    :data:`RESUMABLE_CHANGES`, is beyond ``num_rounds``, or would extend a run whose rounds depend
    on ``num_rounds`` (cosine lr, annealed dampening: the rounds already trained followed the
    shorter schedule, so the continuation could not equal the longer run)."""
    if not (cfg.get("resume") or cfg.get("resume_from")):
        return None
    path = find_checkpoint(cfg.get("resume_from"), runs_root or output_dir.parent.parent, exclude=output_dir)
    ckpt = load_checkpoint(path)
    old = ckpt["config"]
    for key in sorted(set(old) | set(cfg)):
        if key not in RESUMABLE_CHANGES and old.get(key) != cfg.get(key):
            raise CheckpointError(f"{path} was written by a run with a different config: {key} was "
                                  f"{old.get(key)!r}, now {cfg.get(key)!r}; resume with the same settings")
    if old["num_rounds"] != cfg["num_rounds"] and (stretched := _schedules_on_num_rounds(cfg)):
        raise CheckpointError(f"{path} cannot be continued with num_rounds={cfg['num_rounds']} (it ran with "
                              f"{old['num_rounds']}): {stretched} depends on num_rounds, so the rounds already trained "
                              "followed another schedule; keep num_rounds or start afresh")
    if ckpt["round"] > cfg["num_rounds"]:
        raise CheckpointError(f"{path} is at round {ckpt['round']}, beyond num_rounds={cfg['num_rounds']}")
    ckpt["path"] = str(path)
    return ckpt


def _schedules_on_num_rounds(cfg: Mapping) -> str:
    """The configured schedules whose value at a round depends on ``num_rounds`` ("" if none)."""
    client = cfg.get("client") or {}
    found = ["client.lr_schedule=cosine"] if client.get("lr_schedule") == "cosine" else []
    found += ["client.dampen_weight (annealed)"] if client.get("dampen_weight") else []
    return " and ".join(found)
