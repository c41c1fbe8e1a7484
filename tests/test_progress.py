"""Progress of long work (fedquant.tracking.progress): plain throttled lines in logs, a live line
on a terminal, nothing when quiet; replies counted as the server pulls them; the offline tools'
per-setting lines."""

from __future__ import annotations

import io
import json
import re
from types import SimpleNamespace
from uuid import uuid4

from flwr.app import ArrayRecord
from rich.console import Console

from fedquant.experiment.workspace import build_quantized_model, federated_data
from fedquant.models.state import float_state
from fedquant.tracking import ConsoleReporter
from fedquant.tracking.progress import Progress, Steps, seconds
from strategies import build_strategy
from strategies.reply_progress import CountingGrid
from tests.helpers import TINY, make_config
from tests.inprocess import InProcessGrid, train_config
from tests.test_strategies import setup_and_plan

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def plain(clock: Clock, quiet: bool = False) -> tuple[ConsoleReporter, io.StringIO]:
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=False, width=200)
    progress = Progress(console, quiet=quiet, every_s=15.0, clock=clock, ticker=False)
    return ConsoleReporter(4, quiet=quiet, console=console, clock=clock, progress=progress), buf


def test_plain_mode_prints_throttled_round_progress_then_the_round_line():
    clock = Clock()
    reporter, buf = plain(clock)
    reporter.round_done(0, None, 0, {"fp": 0.1})
    for t, done in ((0.1, 0), (5.0, 1), (16.0, 3), (20.0, 5), (25.0, 10)):  # a round of 10 clients
        clock.now = t
        reporter.clients(1, done, 10)
    clock.now = 32.0
    reporter.evaluating(1, "w4a4", 2, 3)
    clock.now = 33.0
    reporter.round_done(1, 0.5, 0, {"fp": 0.9})
    for r, took in ((2, 10.0), (3, 10.0)):  # short rounds: the round line only
        clock.now += took / 2
        reporter.clients(r, 4, 10)
        clock.now += took / 2
        reporter.round_done(r, 0.4, 0, None)
    reporter.clients(4, 0, 10)  # sent
    clock.now += 16.0  # round 4 runs longer than the mean of rounds 2 and 3 (10 s): ETA 0
    reporter.clients(4, 7, 10)
    lines = buf.getvalue().splitlines()
    assert lines[0] == "round 0/4 initial model  fp 10.0"
    assert lines[1] == "round 1/4: 3/10 clients done, 16 s"  # not before 15 s; no ETA in round 1
    assert lines[2] == "round 1/4: evaluating w4a4 (2/3 settings), 32 s"  # 5 s later was throttled
    assert lines[3].startswith("round 1/4  33.0 s  ETA     - s  train loss 0.5000  fp 90.0")
    assert lines[4].startswith("round 2/4  10.0 s") and lines[5].startswith("round 3/4  10.0 s  ETA    10 s")
    assert lines[6] == "round 4/4: 7/10 clients done, 16 s, ETA 0.0 s"
    assert len(lines) == 7


def test_the_eta_during_a_round_counts_the_rest_of_it_and_the_rounds_after():
    clock = Clock()
    reporter, buf = plain(clock)
    reporter.round_done(0, None, 0, None)
    for r in (1, 2):
        clock.now += 20.0
        reporter.round_done(r, None, 0, None)
    reporter.clients(3, 0, 2)
    clock.now += 16.0  # round 3 of 4, 16 s into a 20 s mean: 4 s of it and round 4 left
    reporter.clients(3, 1, 2)
    assert buf.getvalue().splitlines()[-1] == "round 3/4: 1/2 clients done, 16 s, ETA 24 s"


def test_quiet_prints_no_progress():
    clock = Clock()
    reporter, buf = plain(clock, quiet=True)
    reporter.round_done(0, None, 0, {"fp": 0.1})
    clock.now = 100.0
    reporter.clients(1, 3, 10)
    reporter.evaluating(1, "fp", 1, 1)
    reporter.progress.tick(force=True)
    reporter.round_done(1, 0.5, 0, {"fp": 0.9})
    assert buf.getvalue() == ""


def test_the_throttle_prints_at_most_one_line_per_interval_and_forced_lines_at_once():
    clock = Clock()
    buf = io.StringIO()
    progress = Progress(Console(file=buf, force_terminal=False), every_s=10.0, clock=clock, ticker=False)
    progress.update(lambda: f"working, {clock.now:.0f} s")
    assert not progress.tick()  # the work has just begun
    clock.now = 9.9
    assert not progress.tick()
    clock.now = 10.0
    assert progress.tick() and not progress.tick()  # printed, then quiet for another 10 s
    clock.now = 19.0
    assert not progress.tick()
    progress.update("a step ended", force=True)  # forced: at once, and the interval restarts
    clock.now = 28.0
    assert not progress.tick()
    clock.now = 29.0
    assert progress.tick()
    progress.close()
    assert not progress.tick() and not progress.active
    assert buf.getvalue().splitlines() == ["working, 10 s", "a step ended", "a step ended"]


def test_the_ticker_prints_a_long_step_without_updates():
    buf = io.StringIO()
    progress = Progress(Console(file=buf, force_terminal=False), every_s=0.05)
    progress.update("still training")
    import time

    deadline = time.monotonic() + 3.0
    while "still training" not in buf.getvalue() and time.monotonic() < deadline:
        time.sleep(0.01)
    progress.close()
    assert buf.getvalue().startswith("still training\n")


def test_live_mode_on_a_terminal_shows_the_status_and_ends_with_the_round_line():
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=120)
    reporter = ConsoleReporter(4, console=console)
    assert reporter.progress.live_mode
    reporter.round_done(0, None, 0, None)
    reporter.clients(1, 3, 10)
    reporter.evaluating(1, "w4a4", 2, 3)
    reporter.round_done(1, 0.5, 0, {"fp": 0.9})
    out = buf.getvalue()
    assert "3/10 clients done" in out and "evaluating w4a4 (2/3 settings)" in out
    assert "\x1b[2K" in out  # the live line was erased (transient)
    last = ANSI.sub("", out).rstrip("\n").splitlines()[-1]
    assert re.match(r"round 1/4\s+[\d.]+ s\s+ETA\s+- s\s+train loss 0\.5000\s+fp 90\.0$", last)
    assert not reporter.progress.active


def test_steps_print_a_line_per_setting_with_the_jobs_time():
    clock = Clock()
    buf = io.StringIO()
    progress = Progress(Console(file=buf, force_terminal=False, width=200), clock=clock, ticker=False)
    steps = Steps(progress, "[2/5] job_1", clock=clock)
    steps.update("loading its checkpoints and data")
    for i, (setting, took) in enumerate((("fp", 2.0), ("w4a4", 39.0)), 1):
        steps(setting, i, 2)
        clock.now += took
    draw = steps.stage("calibration draw 1/3", lines=False)
    draw("w4a4", 1, 1)
    clock.now += 20.0
    progress.tick()  # a long draw: the status after 15 s without a line
    steps.done()
    progress.close()
    assert buf.getvalue().splitlines() == [
        "[2/5] job_1: fp 1/2 settings, 2.0 s",
        "[2/5] job_1: w4a4 2/2 settings, 41 s",
        "[2/5] job_1: evaluating calibration draw 1/3 w4a4 (1/1 settings), 20 s; job 61 s",
    ]


def test_durations_are_short_to_read():
    assert [seconds(s) for s in (0.04, 8.25, 41.4, 599.0, 456.0, 3725.0)] == \
        ["0.0 s", "8.2 s", "41 s", "599 s", "456 s", "62 min 05 s"]


# -- replies counted as they are pulled (strategies.reply_progress) ------------------------------

class PulledOneByOne(InProcessGrid):
    """The real ClientApp handler behind Flower's push_messages / pull_messages: one reply per look."""

    pull_interval = 0.0

    def push_messages(self, messages):
        self.queue = []
        for m in messages:
            m.metadata.__dict__["_message_id"] = str(uuid4())  # as Flower's grids do
            self.queue.append(m)
        return [m.metadata.message_id for m in self.queue]

    def pull_messages(self, message_ids):
        return [self._call(self.queue.pop(0))] if self.queue else []


class OneReplyPerLook:
    """A grid with Flower's push_messages / pull_messages: each look brings one reply."""

    pull_interval = 0.0

    def __init__(self) -> None:
        self.queue: list = []

    def push_messages(self, messages):
        ids = [str(uuid4()) for _ in messages]
        self.queue += ids
        return ids

    def pull_messages(self, message_ids):
        if not self.queue:
            return []
        return [SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=self.queue.pop(0)))]

    def get_node_ids(self):
        return [7]


def test_replies_are_counted_as_they_are_pulled():
    seen = []
    grid = CountingGrid(OneReplyPerLook(), lambda done, sent: seen.append((done, sent)))
    replies = grid.send_and_receive(["m1", "m2", "m3"], timeout=None)
    assert len(replies) == 3 and seen == [(0, 3), (1, 3), (2, 3), (3, 3)]
    assert grid.get_node_ids() == [7]  # everything else is the wrapped grid's
    assert grid.send_and_receive([], timeout=None) == [] and len(seen) == 4  # nothing sent: nothing to count


def test_a_grid_without_push_and_pull_reports_before_and_after():
    seen = []

    class Synchronous:
        def send_and_receive(self, messages, timeout=None):
            return [f"reply to {m}" for m in messages]

    grid = CountingGrid(Synchronous(), lambda done, sent: seen.append((done, sent)))
    assert grid.send_and_receive(["a", "b"]) == ["reply to a", "reply to b"]
    assert seen == [(0, 2), (2, 2)]


def test_the_strategy_reports_each_rounds_replies_with_its_round():
    cfg = make_config(*TINY, "num_rounds=1")
    setup, plan = setup_and_plan(cfg)
    seen = []
    strategy = build_strategy("fedavg", plan, on_replies=lambda *args: seen.append(args))
    model = build_quantized_model(setup.model, federated_data(setup.data).data, seed=cfg["seed"])
    strategy.start(grid=PulledOneByOne(setup, 3), initial_arrays=ArrayRecord(float_state(model)), num_rounds=1,
                   train_config=train_config(cfg))
    assert seen == [(r, done, 3) for r in (1,) for done in range(4)]


def test_the_run_counts_replies_on_its_console(tmp_path):
    from fedquant.app import Experiment

    experiment = Experiment(make_config(*TINY), tmp_path)
    try:
        assert experiment.strategy.on_replies == experiment.reporter.clients
    finally:
        experiment.close()


# -- the offline tools -------------------------------------------------------------------------

def test_reevaluate_prints_a_line_per_setting_of_each_job(tmp_path, capsys):
    from fedquant.experiment.specs import experiment_specs
    from fedquant.reevaluate.__main__ import main
    from fedquant.runtime.checkpoint import save_checkpoint

    cfg = make_config("num_rounds=1", "eval.settings=[fp,w4a4]")
    data_spec, model_spec = experiment_specs(cfg)
    state = float_state(build_quantized_model(model_spec, federated_data(data_spec).data, seed=cfg["seed"]))
    for job in ("0", "1"):
        save_checkpoint(tmp_path / "sweep" / job, 1, {"arrays": state, "config": cfg})
        (tmp_path / "sweep" / job / "results.json").write_text(json.dumps({"config": cfg, "wall_time_s": 1.0}))
    main([str(tmp_path / "sweep"), "--out", str(tmp_path / "out")])
    out = capsys.readouterr().out
    for i, job in enumerate(("0", "1"), 1):  # a line per setting as it ends, then the job's line
        assert re.search(rf"^\[{i}/2\] {job} \(basic PTQ\): fp 1/2 settings, [\d.]+ s\n"
                         rf"\[{i}/2\] {job} \(basic PTQ\): w4a4 2/2 settings, [\d.]+ s\n"
                         rf"\[{i}/2\] {job}: final model: fp \d+\.\d\d w4a4 \d+\.\d\d \([\d.]+ s\)$", out, re.M), out


def test_width_levels_number_their_settings_after_the_full_models(monkeypatch):
    from fedquant.learning import width_evaluation

    class Fake:
        def __init__(self, settings):
            self.settings, self.model = settings, None
            self.jobs = len(settings)  # settings (and budgets: none here)

        def __call__(self, state, on_setting=None):
            for i, name in enumerate(self.settings, 1):
                on_setting(name, i, len(self.settings))
            return {"test": {}, "validation": {}}

    monkeypatch.setattr(width_evaluation, "extract", lambda state, like: state)
    monkeypatch.setattr(width_evaluation, "float_state", lambda model: None)
    seen = []
    levelled = width_evaluation.LevelledEvaluator(Fake(["fp", "w4a4"]), {0.5: Fake(["fp", "w2a2"])})
    levelled({}, on_setting=lambda *args: seen.append(args))
    assert seen == [("fp", 1, 4), ("w4a4", 2, 4), ("fp@0.5", 3, 4), ("w2a2@0.5", 4, 4)]


def test_the_round_line_names_the_first_failure_and_counts_the_rest():
    clock = Clock()
    reporter, buf = plain(clock)
    reporter.round_done(0, None, 0, None)
    clock.now = 10.0
    reasons = ["client 3: rejected reply: missing array '1.weight'", "client 5: injected failure"]
    reporter.round_done(1, 0.5, 2, {"fp": 0.9}, reasons)
    assert buf.getvalue().splitlines()[-1].endswith(
        "train loss 0.5000  2 client failure(s) client 3: rejected reply: missing array '1.weight' (+1 more)  fp 90.0")
