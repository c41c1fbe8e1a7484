"""The Optuna study: where it is stored, how it samples and prunes, the objective, one line per
trial and the summary.

- **Storage**: an Optuna RDB URL (``sqlite:///tune.db``, PostgreSQL, MySQL), opened with
  ``load_if_exists``: running the same command again continues the study up to ``--trials`` in
  all. The study keeps the overrides, the space and the metric it was started with (user
  attributes); continuing it with others is refused, so one study never mixes two searches.
  Trials left RUNNING by a killed tuner are failed (Optuna's heartbeat) once their grace period ends.
- **Sampler**: ``TPESampler(seed=seed + trials already in the study)``: a new study is
  reproducible and a continued one draws new points.
- **Pruner**: ``MedianPruner(n_startup_trials, n_warmup_steps)`` (a step is a round), or none.
- **Objective**: the trial's results.json ``final_validation[metric]``, a validation accuracy:
  the test set is never chosen on.
"""

from __future__ import annotations

import shlex
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, Trial, TrialState

from .checks import SetupError
from .space import Space, as_overrides, suggest, to_spec
from .trial import KILL_GRACE_S, TrialFailed, fedquant_command, final_value, run_trial
from .watch import Rounds, RoundWatcher

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
HEARTBEAT_S, GRACE_S = 60, 180  # a RUNNING trial without a heartbeat for GRACE_S is failed


@dataclass(frozen=True)
class Search:
    """What every trial runs: the base ``overrides``, the ``space``, the objective's ``metric``
    (a setting name, e.g. ``w4a4``) and the folder of the trials' runs and logs. ``command``,
    ``watcher`` and ``value`` are how a trial is run and read (swapped in tests)."""

    overrides: tuple[str, ...]
    space: Space
    metric: str
    root: Path
    poll_s: float = 1.0
    grace_s: float = KILL_GRACE_S
    command: Callable[[Sequence[str], Mapping, Path], list[str]] = fedquant_command
    watcher: Callable[[Path, str], Callable[[], Rounds]] = RoundWatcher
    value: Callable[[Path, str], float] = final_value
    signature: dict = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "signature", {
            "overrides": list(self.overrides), "metric": self.metric,
            "space": [to_spec(k, d) for k, d in self.space.items()]})

    def run_dir(self, number: int) -> Path:
        return self.root / f"trial_{number}"

    def log(self, number: int) -> Path:
        return self.root / f"trial_{number}.log"


def objective(search: Search) -> Callable[[Trial], float]:
    """One trial: a point from the sampler, its run (reported round by round, stopped when the
    pruner says so: ``TrialPruned``), its final validation accuracy. A run that fails raises
    :class:`TrialFailed` (the trial FAILs, the study goes on)."""

    def run(trial: Trial) -> float:
        point = suggest(trial, search.space)
        run_dir, log = search.run_dir(trial.number), search.log(trial.number)
        trial.set_user_attr("run_dir", str(run_dir))

        def on_round(server_round: int, value: float) -> bool:
            trial.report(value, server_round)
            return trial.should_prune()

        try:
            if run_dir.exists() and any(run_dir.iterdir()):
                raise TrialFailed(f"{run_dir} is not empty (another study's trial?): give this study its own --root")
            stopped = run_trial(search.command(search.overrides, point, run_dir), log,
                                search.watcher(run_dir, search.metric), on_round, search.poll_s, search.grace_s)
            if stopped is not None:
                trial.set_user_attr("pruned_at", stopped)
                raise optuna.TrialPruned(f"pruned at round {stopped}")
            return search.value(run_dir, search.metric)
        except TrialFailed as err:
            trial.set_user_attr("error", str(err))
            raise

    return run


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """An RDB storage with heartbeats (stale RUNNING trials are failed); a bad URL is a SetupError."""
    try:
        with warnings.catch_warnings():  # heartbeats are marked experimental (since Optuna 2.9)
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S)
    except Exception as err:  # noqa: BLE001 - SQLAlchemy's and Optuna's errors: the first line says what
        raise SetupError(f"--storage {url}: {str(err).strip().splitlines()[0]}") from None


def open_study(name: str, storage: str | optuna.storages.BaseStorage, search: Search, seed: int = 0,
               prune: bool = True, startup_trials: int = 5, warmup_rounds: int = 2) -> optuna.Study:
    """Create the study ``name`` in ``storage``, or load it (it must hold the same search)."""
    store = open_storage(storage) if isinstance(storage, str) else storage
    study = optuna.create_study(storage=store, study_name=name, direction="maximize", load_if_exists=True)
    known = {k: study.user_attrs[k] for k in search.signature if k in study.user_attrs}
    if known and known != search.signature:
        differs = "; ".join(f"{k}: {_show(v)}" for k, v in known.items() if v != search.signature[k])
        raise SetupError(f"study {name} was started with other settings ({differs}); continue it with the same "
                         "ones, or start another study (--study-name)")
    for key, value in search.signature.items():
        study.set_user_attr(key, value)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    study.sampler = optuna.samplers.TPESampler(seed=seed + len(study.trials))
    study.pruner = (optuna.pruners.MedianPruner(n_startup_trials=startup_trials, n_warmup_steps=warmup_rounds)
                    if prune else optuna.pruners.NopPruner())
    return study


def _show(value: object) -> str:
    return " ".join(map(str, value)) if isinstance(value, list) else str(value)


def finished(study: optuna.Study) -> list[FrozenTrial]:
    return study.get_trials(deepcopy=False, states=FINISHED)


def _params(params: Mapping) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def trial_line(trial: FrozenTrial, metric: str) -> str:
    """``trial 3  client.lr=0.0412  w4a4 0.8421 (validation)  41 s`` (or pruned / failed)."""
    seconds = trial.duration.total_seconds() if trial.duration else 0.0
    if trial.state == TrialState.COMPLETE:
        outcome = f"{metric} {trial.value:.4f} (validation)"
    elif trial.state == TrialState.PRUNED:
        step = trial.last_step
        at = f" ({metric} {trial.intermediate_values[step]:.4f} there)" if step is not None else ""
        outcome = f"pruned at round {trial.user_attrs.get('pruned_at', step)}{at}"
    else:
        outcome = f"failed: {trial.user_attrs.get('error', 'see its log')}"
    return f"trial {trial.number}  {_params(trial.params)}  {outcome}  {seconds:.0f} s"


def optimize(study: optuna.Study, search: Search, trials: int, out: Callable[[str], None] = print) -> int:
    """Run trials until the study holds ``trials`` finished ones (complete, pruned or failed);
    one line per trial. Returns how many ran now."""
    todo = max(trials - len(finished(study)), 0)
    if todo:
        search.root.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.optimize(objective(search), n_trials=todo, catch=(TrialFailed,),
                           callbacks=[lambda _, t: out(trial_line(t, search.metric))])
    return todo


def reproduce(overrides: Sequence[str], params: Mapping) -> str:
    """The command that runs a trial's point again (with its own output folder)."""
    return shlex.join(["python", "-m", "fedquant", *overrides, *as_overrides(params)])


def summary(study: optuna.Study, search: Search) -> list[str]:
    """The study's counts, its best trial and the command that reproduces it (no best: one line)."""
    counts = {s: len(study.get_trials(deepcopy=False, states=(s,))) for s in FINISHED}
    lines = [f"study {study.study_name}: {sum(counts.values())} trials ({counts[TrialState.COMPLETE]} complete, "
             f"{counts[TrialState.PRUNED]} pruned, {counts[TrialState.FAIL]} failed)"]
    if not counts[TrialState.COMPLETE]:
        return [*lines, "no trial completed: there is no best point"]
    best = study.best_trial
    return [*lines,
            f"best: trial {best.number}, {search.metric} {best.value:.4f} (final validation accuracy) with "
            f"{_params(best.params)}; its run: {best.user_attrs.get('run_dir')}",
            f"reproduce: {reproduce(search.overrides, best.params)}"]
