"""What the server does after each round: when it evaluates and checkpoints, and what it times."""

from __future__ import annotations

import pytest

from fedquant.experiment.history import RunHistory
from fedquant.experiment.rounds import AfterRound, Schedule
from fedquant.federation.reports import ClientReport, RoundReport
from fedquant.tracking import ConsoleReporter


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_schedule_evaluates_every_n_rounds_and_after_the_last():
    s = Schedule(num_rounds=7, eval_every=3, eval_initial=False, checkpoint_every=2)
    assert [r for r in range(8) if s.evaluates(r)] == [3, 6, 7]
    assert [r for r in range(8) if s.checkpoints(r)] == [2, 4, 6, 7]
    assert Schedule(3).evaluates(0) and not Schedule(3, checkpoint_every=0).checkpoints(3)


@pytest.mark.parametrize("resumed_round", [None, 2])
def test_round_time_excludes_evaluation_checkpoint_and_logging(resumed_round):
    """Round r's time runs from the end of the previous call (after W&B logging) to the start of
    this one: evaluation, checkpoint and logging time are never counted as training."""
    clock = Clock()
    history = RunHistory()
    saved = []

    def evaluator(state, on_setting=None):
        clock.now += 1.0  # evaluation takes 1 s
        return {"test": {"fp": {"accuracy": state["acc"], "loss": 0.0}},
                "validation": {"fp": {"accuracy": state["acc"] / 2, "loss": 0.0}}}

    class SlowLogger:
        def log_round(self, *args):
            clock.now += 10.0  # W&B logging takes 10 s

    def save(r, state):
        clock.now += 100.0  # a checkpoint takes 100 s
        saved.append(r)

    after = AfterRound(history, evaluator, Schedule(num_rounds=4), ConsoleReporter(4, quiet=True), [], save,
                       SlowLogger(), resumed_round=resumed_round, started=clock.now, clock=clock)
    first = resumed_round or 0
    for r in range(first, 5):
        if r > first:
            clock.now += 3.0 * r  # training of round r takes 3r s
            history.record_train(r, RoundReport([ClientReport(0, None, 10, 0.5, {"fp": 1})]))
        evals = after(r, {"acc": r / 10})
        assert (evals is None) == (r == resumed_round)
    assert history.round_s == {r: 3.0 * r for r in range(first + 1, 5)}
    assert history.eval_s == {r: 1.0 for r in range(first if resumed_round is None else first + 1, 5)}
    assert saved == list(range(max(first, 1) if resumed_round is None else first + 1, 5))
    assert history.final() == {"fp": 0.4} and history.final("validation") == {"fp": 0.2}
    if resumed_round is None:  # start -> end of round 1: round 0's evaluation and logging + round 1
        assert history.to_round1_end_s == 1.0 + 10.0 + 3.0


def test_the_evaluated_model_is_the_average_when_asked():
    import torch

    from fedquant.experiment.averaging import WeightAverage

    seen = []

    def evaluator(state, on_setting=None):
        seen.append(float(state["w"]))
        return {"test": {"fp": {"accuracy": 0.0, "loss": 0.0}}, "validation": {}}

    after = AfterRound(RunHistory(), evaluator, Schedule(num_rounds=3), ConsoleReporter(3, quiet=True), [],
                       averaging=WeightAverage("swa"))
    for r in range(4):
        after(r, {"w": torch.tensor(float(r))})
    assert seen == [0.0, 1.0, 1.5, 2.0]  # round 0 as it is, then the mean of rounds 1..r
