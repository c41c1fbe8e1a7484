"""A trial's validation accuracy at one setting, per evaluated round, while the run goes on.

A running fedquant run writes its history into every checkpoint (``checkpoint_rNNNNN.pt``, every
``checkpoint.every`` rounds, written atomically, the newest holding every round so far) and, when
it ends, results.json; metrics.csv is written only at the end and holds test accuracies, so it is
no source for pruning. Round 0 (the initial model, the same for every trial) is left out. With
``checkpoint.every=0`` nothing is seen before the run ends, so nothing can be pruned.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from fedquant.runtime.checkpoint import CheckpointError, list_checkpoints, load_checkpoint

Rounds = dict[int, float]


def _at(validation: Mapping, metric: str) -> Rounds:
    """``{round: {setting: {accuracy, loss}}}`` (round keys int or str) -> ``{round: accuracy}``."""
    out = {int(r): float(e[metric]["accuracy"]) for r, e in validation.items() if metric in e}
    return {r: v for r, v in sorted(out.items()) if r > 0}


def from_results(results: Mapping, metric: str) -> Rounds:
    """Validation accuracy at ``metric`` per evaluated round of a finished run's results.json."""
    return _at({r["round"]: r["validation"] for r in results["rounds"] if "validation" in r}, metric)


class RoundWatcher:
    """``watcher()`` -> the rounds ``run_dir``'s run has evaluated so far: from results.json once
    written, else from the newest checkpoint (loaded again only when a newer one appears; one
    being replaced or pruned under us reads as nothing new)."""

    def __init__(self, run_dir: Path, metric: str) -> None:
        self.run_dir, self.metric = Path(run_dir), metric
        self._seen: tuple[str, int] | None = None
        self._rounds: Rounds = {}

    def __call__(self) -> Rounds:
        results = self.run_dir / "results.json"
        if results.is_file():
            try:
                return from_results(json.loads(results.read_text()), self.metric)
            except (OSError, ValueError, KeyError):
                return self._rounds
        found = list_checkpoints(self.run_dir)
        if not found:
            return self._rounds
        try:
            stamp = (found[-1].name, found[-1].stat().st_mtime_ns)
            if stamp != self._seen:
                self._rounds = _at(load_checkpoint(found[-1]).get("validation", {}), self.metric)
                self._seen = stamp
        except (OSError, CheckpointError):
            pass
        return self._rounds
