"""What the server does after every round, independent of Flower: time the round, evaluate the
global model when due (the setting being evaluated shown as progress), print the round's line,
checkpoint, and log."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..federation.profiles import Profile, per_profile
from ..learning.evaluation import Evaluator
from ..tracking import ConsoleReporter
from .averaging import WeightAverage
from .history import RunHistory

State = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Schedule:
    """When the server evaluates and checkpoints: every ``eval_every`` rounds and after the last
    (round 0, the initial model, when ``eval_initial``); checkpoints every ``checkpoint_every``
    rounds and after the last (0: never)."""

    num_rounds: int
    eval_every: int = 1
    eval_initial: bool = True
    checkpoint_every: int = 1

    def evaluates(self, server_round: int) -> bool:
        if server_round == 0:
            return self.eval_initial
        return server_round % self.eval_every == 0 or server_round == self.num_rounds

    def checkpoints(self, server_round: int) -> bool:
        every = self.checkpoint_every
        return server_round > 0 and every > 0 and (server_round % every == 0 or server_round == self.num_rounds)


@dataclass
class AfterRound:
    """Called with the global model after every round (and at round 0) by the server.

    The time of round ``r`` runs from the end of the previous call (evaluation, checkpoint and
    logging included there) to the start of this one, so it is the round's training alone.
    ``resumed_round`` is the round a resumed run restarts after: its model was evaluated before
    the stop, so that call only starts the clock.
    """

    history: RunHistory
    evaluator: Evaluator
    schedule: Schedule
    reporter: ConsoleReporter
    profiles: list[Profile]
    save_checkpoint: Callable[[int, State], None] | None = None
    logger: object | None = None  # a WandbLogger-like object with log_round(...)
    resumed_round: int | None = None
    averaging: WeightAverage | None = None  # evaluate an average of the global models instead
    started: float = field(default_factory=time.perf_counter)  # the run's start
    clock: Callable[[], float] = time.perf_counter
    _last: float | None = None

    def __call__(self, server_round: int, state: State) -> dict | None:
        """Returns the round's evaluation (``{"test": ..., "validation": ...}``, each setting ->
        {accuracy, loss}), or None when not due."""
        now = self.clock()
        if server_round == self.resumed_round:
            self._last = now
            return None
        if self._last is not None:
            self.history.round_s[server_round] = now - self._last
            if server_round == 1:
                self.history.to_round1_end_s = now - self.started
        evaluated = self.averaging.update(server_round, state) if self.averaging and server_round else state
        evaluation = None
        if self.schedule.evaluates(server_round):
            evaluation = self.evaluator(evaluated, on_setting=lambda name, i, m: self.reporter.evaluating(
                server_round, name, i, m))
            self.history.record_eval(server_round, evaluation, self.clock() - now)
        report = self.history.reports.get(server_round)
        accuracies = {k: v["accuracy"] for k, v in evaluation["test"].items()} if evaluation else None
        self.reporter.round_done(server_round, report.loss if report else None,
                                 len(report.failures) if report else 0, accuracies, report.failures if report else ())
        if self.save_checkpoint is not None and self.schedule.checkpoints(server_round):
            self.save_checkpoint(server_round, state)
        if self.logger is not None:
            train = {"loss": report.loss, "failures": len(report.failures), "bits_used": report.bits_used,
                     "uplink_bytes": report.uplink_bytes, "downlink_bytes": report.downlink_bytes,
                     "cumulative_uplink_bytes": sum(r.uplink_bytes for k, r in self.history.reports.items()
                                                    if k <= server_round)} if report else None
            self.logger.log_round(server_round, evaluation, train,
                                  per_profile(self.profiles, accuracies) if accuracies else None)
        self._last = self.clock()  # after logging: the next round's time is its training only
        return evaluation
