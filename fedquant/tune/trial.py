"""One trial's process: ``python -m fedquant`` in its own session, watched round by round, stopped
with its whole process group (Ray's workers included) when asked, its result read from results.json.

Nothing here knows Optuna: the study passes ``on_round(round, value) -> stop?`` (report to the
trial, ask the pruner) and turns the outcome into a value, a pruned trial or a failed one.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from .space import as_overrides
from .watch import Rounds

try:  # Ray's services may leave the process group; psutil (where installed) finds them too
    import psutil
except ImportError:  # pragma: no cover - psutil comes with the test extra, not with fedquant
    psutil = None

KILL_GRACE_S = 10.0  # SIGTERM to the group, then SIGKILL after this long


class TrialFailed(RuntimeError):
    """The trial's run ended without a result; ``str()`` says how, with its log's last line."""


def fedquant_command(overrides: Sequence[str], point: Mapping, run_dir: Path) -> list[str]:
    """``python -m fedquant <overrides> <point> quiet=true hydra.run.dir=<run_dir>`` (``quiet``
    unless the overrides set it)."""
    quiet = [] if any(o.lstrip("+~").startswith("quiet=") for o in overrides) else ["quiet=true"]
    return [sys.executable, "-m", "fedquant", *overrides, *as_overrides(point), *quiet, f"hydra.run.dir={run_dir}"]


def stop(proc: subprocess.Popen, grace_s: float = KILL_GRACE_S) -> None:
    """End ``proc``'s process group (``proc`` leads it: ``start_new_session``): SIGTERM, SIGKILL to
    whatever is left after ``grace_s`` or once the leader ended, then any descendant that moved to
    another session."""
    family = []
    if psutil is not None:
        with contextlib.suppress(psutil.Error):
            family = psutil.Process(proc.pid).children(recursive=True)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace_s)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    for child in family:
        with contextlib.suppress(psutil.Error):
            child.kill()


def last_line(log: Path) -> str:
    """The log's last non-empty line (the run's one-line error, or a traceback's last line)."""
    with contextlib.suppress(OSError):
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
        if lines:
            return lines[-1][:300]
    return "no output"


def run_trial(command: Sequence[str], log: Path, rounds: Callable[[], Rounds],
              on_round: Callable[[int, float], bool], poll_s: float = 1.0,
              grace_s: float = KILL_GRACE_S) -> int | None:
    """Run ``command`` (stdout and stderr to ``log``) in a new session; every ``poll_s`` pass each
    round newly seen by ``rounds()`` to ``on_round``, in order. When that returns True the process
    group is stopped and the round is returned. None when the run ended by itself with exit code 0
    (its last rounds passed on too); another exit code is :class:`TrialFailed`. Any exception here
    (Ctrl-C included) stops the process group before it propagates."""
    seen = 0
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        proc = subprocess.Popen(list(command), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    try:
        while True:
            done = proc.poll() is not None
            for r, value in rounds().items():
                if r > seen:
                    seen = r
                    if on_round(r, value) and not done:
                        stop(proc, grace_s)
                        return r
            if done:
                break
            time.sleep(poll_s)
    finally:
        if proc.poll() is None:
            stop(proc, grace_s)
    if proc.returncode != 0:
        raise TrialFailed(f"exit code {proc.returncode}: {last_line(log)} (log: {log})")
    return None


def final_value(run_dir: Path, metric: str) -> float:
    """results.json's ``final_validation[metric]``: the validation accuracy at the last
    evaluation (never a test one)."""
    path = Path(run_dir) / "results.json"
    try:
        return float(json.loads(path.read_text())["final_validation"][metric])
    except (OSError, ValueError, KeyError) as err:
        raise TrialFailed(f"{path}: no final_validation[{metric}] ({type(err).__name__}: {err})") from None
