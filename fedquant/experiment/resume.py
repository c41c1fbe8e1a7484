"""Finding and checking the checkpoint a run continues from (``resume``, ``resume_from``) or
starts from (``init_from``)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch

from ..runtime.checkpoint import CheckpointError, find_checkpoint, load_checkpoint
from .config import complete

# keys that may change between a checkpointed run and its resumption
RESUMABLE_CHANGES = ("resume", "resume_from", "init_from", "quiet", "logger", "simulation", "checkpoint", "num_rounds",
                     "faults")


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
    old = complete(ckpt["config"], legacy=True)  # keys added since: what that run did
    new = complete(cfg)
    for key in sorted(set(old) | set(new)):
        if key not in RESUMABLE_CHANGES and old.get(key) != new.get(key):
            raise CheckpointError(f"{path} was written by a run with a different config: {key} was "
                                  f"{old.get(key)!r}, now {new.get(key)!r}; resume with the same settings")
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


def load_init(cfg: Mapping, initial: Mapping[str, torch.Tensor]) -> tuple[dict, dict] | None:
    """``init_from``: another run's final global model (its newest checkpoint's arrays, not an
    evaluated average) as this run's initial model, checked against this run's ``initial`` state
    (same entries, same shapes); with what it came from: ``{"checkpoint", "round", "strategy",
    "wall_time_s"}`` (the source run's, from its results.json when there), so its cost can be
    counted. None without ``init_from``."""
    if not cfg.get("init_from"):
        return None
    path = find_checkpoint(cfg["init_from"], Path("."), key="init_from")
    payload = load_checkpoint(path)
    arrays = payload["arrays"]
    missing, extra = sorted(set(initial) - set(arrays)), sorted(set(arrays) - set(initial))
    shapes = [k for k in initial if k in arrays and tuple(arrays[k].shape) != tuple(initial[k].shape)]
    if missing or extra or shapes:
        what = (f"missing {missing[:3]}" if missing else f"extra {extra[:3]}" if extra
                else f"{shapes[0]} is {tuple(arrays[shapes[0]].shape)}, here {tuple(initial[shapes[0]].shape)}")
        raise CheckpointError(f"init_from={cfg['init_from']}: {path} holds another model than this run's "
                              f"model.name={cfg['model']['name']} ({what}); start from a run of the same model")
    source = payload.get("config") or {}
    results = path.parent / "results.json"
    wall = json.loads(results.read_text()).get("wall_time_s") if results.is_file() else None
    info = {"checkpoint": str(path), "round": payload["round"],
            "strategy": (source.get("strategy") or {}).get("name"), "wall_time_s": wall}
    return {k: arrays[k].to(initial[k].dtype) for k in initial}, info
