"""Atomic, weights-only checkpoints of a federated run, and finding the one to resume from.

A checkpoint holds everything needed to continue exactly: the global arrays, the Flower
server-optimizer state (FedAdam moments, FedAvgM momentum), the round, and the metrics history.
No RNG state is needed: every draw (clients, bit-widths, failures, batch order) is seeded by
(seed, round, ...), so round r+1 is the same whether or not the run stopped after round r.
Files are written atomically (:func:`fedquant.files.atomic_write`); the newest ``keep`` are kept, so a damaged
newest file leaves an intact previous one.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ..files import atomic_write

PATTERN = re.compile(r"checkpoint_r(\d{5})\.pt")
VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message says which file and what to do."""


def checkpoint_path(directory: Path, server_round: int) -> Path:
    return Path(directory) / f"checkpoint_r{server_round:05d}.pt"


def list_checkpoints(directory: Path) -> list[Path]:
    """This run directory's checkpoints, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if PATTERN.fullmatch(p.name))


def save_checkpoint(directory: Path, server_round: int, payload: dict, keep: int = 2) -> Path:
    """Write ``payload`` (tensors and plain Python only) for ``server_round``; prune to ``keep``."""
    path = checkpoint_path(directory, server_round)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: torch.save({"version": VERSION, "round": server_round, **payload}, tmp))
    for old in list_checkpoints(directory)[:-keep]:
        old.unlink()
    return path


def load_checkpoint(path: Path) -> dict:
    """Load with ``weights_only=True``; a damaged file raises :class:`CheckpointError` naming it
    and the previous checkpoint beside it, if any."""
    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(payload, dict) or payload.get("version") != VERSION or "arrays" not in payload:
            raise ValueError("not a fedquant checkpoint")
    except Exception as err:  # noqa: BLE001 - any failure to read means the file is unusable
        older = [p for p in list_checkpoints(path.parent) if p.name < path.name]
        hint = f"; the previous checkpoint {older[-1]} is intact: resume with resume_from={older[-1]}" if older \
            else "; no earlier checkpoint exists: start the run again"
        raise CheckpointError(f"{path}: corrupt or unreadable checkpoint ({type(err).__name__}: {err})"[:400] + hint) from None
    return payload


def find_checkpoint(resume_from: str | None, runs_root: Path, exclude: Path | None = None,
                    key: str = "resume_from") -> Path:
    """``resume_from`` (a checkpoint file or a run directory: its newest), else the newest
    checkpoint of any run under ``runs_root`` (Hydra's output root) other than ``exclude`` (the
    new run's own dir); ``key`` names the config key in errors."""
    if resume_from:
        target = Path(resume_from).expanduser()
        if target.is_file():
            return target
        found = list_checkpoints(target)
        if not found:
            raise CheckpointError(f"{key}={resume_from}: no checkpoint_r*.pt there; pass a checkpoint file or a run directory that has one")
        return found[-1]
    candidates = [p for p in Path(runs_root).rglob("checkpoint_r*.pt")
                  if PATTERN.fullmatch(p.name) and (exclude is None or Path(exclude) not in p.parents)]
    if not candidates:
        raise CheckpointError(f"resume=true: no checkpoint under {runs_root}; run without resume, or pass resume_from=<run dir>")
    return max(candidates, key=lambda p: (p.stat().st_mtime, p.name))


def evaluated_state(payload: dict) -> dict:
    """The model a checkpoint's run evaluates: the average of the global models when the run
    averaged them (``eval.average``), else the global model itself."""
    average = (payload.get("average") or {}).get("average")
    return {k: v.float() for k, v in average.items()} if average else payload["arrays"]
