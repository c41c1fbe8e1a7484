"""python -m fedquant.tune: the search space syntax, the checks before any trial, the trial's
process (pruned with its whole process group, failed without stopping the study), a study
continued from its storage, and one real study end to end."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")
import psutil  # noqa: E402
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from fedquant.tune.__main__ import main  # noqa: E402
from fedquant.tune.checks import SetupError, check_setup, metric_name  # noqa: E402
from fedquant.tune.space import (  # noqa: E402
    SYNTAX,
    SpaceError,
    as_overrides,
    corners,
    parse_param,
    parse_space,
    to_spec,
)
from fedquant.tune.study import Search, open_study, optimize, summary  # noqa: E402
from fedquant.tune.watch import from_results  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------------------ the space syntax

@pytest.mark.parametrize(("spec", "key", "dist"), [
    ("client.lr=log:0.005:0.3", "client.lr", FloatDistribution(0.005, 0.3, log=True)),
    ("client.momentum=0.5:0.95", "client.momentum", FloatDistribution(0.5, 0.95)),
    ("client.momentum=-1e-1:1", "client.momentum", FloatDistribution(-0.1, 1.0)),
    ("client.local_epochs=int:1:5", "client.local_epochs", IntDistribution(1, 5)),
    ("strategy.sampling=choice:per_step,per_round", "strategy.sampling",
     CategoricalDistribution(["per_step", "per_round"])),
    ("strategy=choice:fedavg,qafedavg", "strategy", CategoricalDistribution(["fedavg", "qafedavg"])),
])
def test_each_syntax_gives_its_distribution(spec, key, dist):
    assert parse_param(spec) == (key, dist)


@pytest.mark.parametrize(("spec", "why"), [
    ("client.lr", "expected KEY=SPEC"), ("=0.1:0.2", "expected KEY=SPEC"), ("client.lr=", "expected KEY=SPEC"),
    ("client.lr=0.1", "a range is two bounds A:B"), ("client.lr=0.1:0.2:0.3", "a range is two bounds A:B"),
    ("client.lr=log:0:0.3", "a log scale needs a lower bound above 0"),
    ("client.lr=0.3:0.1", "is not below the upper bound"), ("client.lr=0.1:b", "'b' is not a number"),
    ("client.lr=0.1:inf", "is not a finite number"), ("client.local_epochs=int:1:2.5", "'2.5' is not an integer"),
    ("client.lr=lg:0.1:0.2", "unknown kind 'lg'"), ("strategy=choice:", "choice needs values"),
    ("strategy=choice:fedavg,,x", "choice needs values"), ("strategy=choice:a,a", "a choice is listed twice"),
])
def test_a_bad_spec_is_one_line_naming_it_and_the_syntax(spec, why):
    with pytest.raises(SpaceError) as err:
        parse_param(spec)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"--param {spec}: ") and why in message
    assert message.endswith(f"the syntax is {SYNTAX}")


@pytest.mark.parametrize("spec", ["client.lr=log:0.005:0.3", "client.momentum=0.5:0.95", "client.local_epochs=int:1:5",
                                  "strategy=choice:fedavg,qafedavg"])
def test_a_spec_written_back_is_the_same_spec(spec):
    assert to_spec(*parse_param(spec)) == spec


def test_a_key_searched_twice_is_refused():
    with pytest.raises(SpaceError, match="client.lr is searched twice"):
        parse_space(["client.lr=0.1:0.2", "client.lr=log:0.1:0.2"])


def test_corners_take_every_bound_and_choice_and_overrides_keep_exact_floats():
    space = parse_space(["client.lr=log:0.01:0.1", "strategy.sampling=choice:per_step,per_round,fixed"])
    assert corners(space) == [{"client.lr": 0.01, "strategy.sampling": "per_step"},
                              {"client.lr": 0.1, "strategy.sampling": "per_step"},
                              {"client.lr": 0.01, "strategy.sampling": "per_round"},
                              {"client.lr": 0.01, "strategy.sampling": "fixed"}]
    assert as_overrides({"client.lr": 0.1 / 3, "client.local_epochs": 2, "strategy": "fedavg"}) == [
        f"client.lr={0.1 / 3!r}", "client.local_epochs=2", "strategy=fedavg"]


# ------------------------------------------------------------------------------ checks before any trial

@pytest.mark.parametrize(("overrides", "param", "message"), [
    (["num_round=3"], "client.lr=0.01:0.1", "did you mean num_rounds?"),
    ([], "client.lrr=0.01:0.1", "did you mean client.lr?"),
    (["client.lr=0.1"], "client.lr=0.01:0.1", "client.lr is searched (--param), so it cannot also be set"),
    (["-m"], "client.lr=0.01:0.1", "flags are not passed to trials"),
    (["hydra.run.dir=x"], "client.lr=0.01:0.1", "the tuner sets each trial's run folder"),
    (["dataset=mnist"], "client.lr=0.01:0.1", "Could not find 'dataset/mnist'"),
    ([], "client.momentum=0.5:1.0", "client.momentum=1.0 is not valid"),  # the upper corner breaks a bound
    ([], "strategy.sampling=choice:per_step,sometimes", "strategy.sampling=sometimes"),
    (["eval.settings=[fp,w8a8]"], "client.lr=0.01:0.1", "--metric w4a4: the runs do not test it"),
    (["dataset.validation=0"], "client.lr=0.01:0.1", "the objective is a validation accuracy"),
])
def test_bad_overrides_and_points_are_caught_before_any_trial(overrides, param, message):
    with pytest.raises(SetupError) as err:
        check_setup(overrides, parse_space([param]), "w4a4")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_the_metric_is_named_as_results_json_names_it():
    assert metric_name("4") == "w4a4" and metric_name("W4A8") == "w4a8" and metric_name("fp") == "fp"
    with pytest.raises(SetupError, match="--metric"):
        metric_name("w99a4")


@pytest.mark.parametrize(("argv", "message"), [
    (["--param", "client.lr=log:0:1"], "error: --param client.lr=log:0:1: a log scale needs a lower bound above 0"),
    (["--param", "client.lrr=0.1:0.2"], "did you mean client.lr?"),
    (["--", "num_round=3"], "did you mean num_rounds?"),
    (["--trials", "0"], "--trials must be at least 1"),
])
def test_cli_errors_are_one_line_exit_2_and_start_nothing(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_:
        main(["--root", str(tmp_path / "root"), *argv])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and len(err.splitlines()) == 1 and message in err
    assert not (tmp_path / "root").exists()


def test_help_states_the_syntax_and_that_the_objective_is_validation(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    for text in ("KEY=log:A:B", "KEY=A:B", "KEY=int:A:B", "KEY=choice:X,Y,Z", "final VALIDATION accuracy",
                 "the test set is never chosen on", "running the same command again continues it"):
        assert text in out


# ------------------------------------------------------------------------------ trials without Ray

# a stand-in run: a child in its process group, one validation row per 0.3 s in rows.csv,
# results.json after ROUNDS rows (ROUNDS=0: never ends), exit code EXIT
FAKE_RUN = textwrap.dedent("""
    import csv, json, os, subprocess, sys, time
    run_dir, lr, rounds, code = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    os.makedirs(run_dir, exist_ok=True)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    json.dump({"pid": os.getpid(), "child": child.pid}, open(os.path.join(run_dir, "pids.json"), "w"))
    if code:
        print("error: the run failed on purpose", file=sys.stderr)
        child.kill()
        sys.exit(code)
    accuracy, r = 0.0, 0
    while rounds == 0 or r < rounds:
        r += 1
        accuracy = min(1.0, lr * r)
        with open(os.path.join(run_dir, "rows.csv"), "a") as f:
            f.write(f"{r},{accuracy}\\n")
        time.sleep(0.3)
    json.dump({"final_validation": {"w4a4": accuracy}, "final": {"w4a4": -1.0}},
              open(os.path.join(run_dir, "results.json"), "w"))
    child.kill()
""")


def fake_search(tmp_path: Path, rounds: int = 2, code: int = 0, **kw) -> Search:
    def command(overrides, point, run_dir):
        return [sys.executable, "-c", FAKE_RUN, str(run_dir), str(point["client.lr"]), str(rounds), str(code)]

    def watcher(run_dir, metric):
        def rounds_so_far():
            path = run_dir / "rows.csv"
            rows = list(csv.reader(path.open())) if path.is_file() else []
            return {int(r): float(a) for r, a in rows}
        return rounds_so_far

    return Search(("num_rounds=3",), parse_space(["client.lr=0.1:0.3"]), "w4a4", tmp_path / "root",
                  poll_s=0.05, grace_s=2.0, command=command, watcher=watcher, **kw)


class PruneAtRound(optuna.pruners.BasePruner):
    def __init__(self, at: int) -> None:
        self.at = at

    def prune(self, study, trial) -> bool:
        return trial.last_step is not None and trial.last_step >= self.at


def group_of(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def gone(pid: int) -> bool:
    """Ended (a zombie only waits for a parent that reaps; a container's init may not)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_pruned_trial_is_stopped_with_its_process_group(tmp_path):
    search = fake_search(tmp_path, rounds=0)  # never ends by itself
    study = open_study("p", optuna.storages.InMemoryStorage(), search)
    study.pruner = PruneAtRound(2)
    lines = []
    start = time.monotonic()
    optimize(study, search, 1, out=lines.append)
    assert time.monotonic() - start < 30
    (trial,) = study.trials
    assert trial.state == TrialState.PRUNED and trial.user_attrs["pruned_at"] == 2
    assert sorted(trial.intermediate_values) == [1, 2]
    pids = json.loads((search.run_dir(0) / "pids.json").read_text())
    assert gone(pids["pid"]) and gone(pids["child"])
    assert not [p for p in psutil.process_iter() if group_of(p.pid) == pids["pid"] and not gone(p.pid)]
    assert lines[0].startswith("trial 0  client.lr=") and "pruned at round 2 (w4a4 " in lines[0]


def test_a_failed_run_fails_its_trial_and_the_study_goes_on(tmp_path):
    search = fake_search(tmp_path, code=3)
    study = open_study("f", optuna.storages.InMemoryStorage(), search)
    lines = []
    optimize(study, search, 2, out=lines.append)
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.FAIL]
    log = search.log(1)
    assert lines[1].startswith("trial 1  client.lr=")
    assert f"failed: exit code 3: error: the run failed on purpose (log: {log})" in lines[1]
    assert summary(study, search)[-1] == "no trial completed: there is no best point"


def test_the_objective_is_final_validation_and_a_study_continues_from_its_storage(tmp_path):
    storage = f"sqlite:///{tmp_path / 's.db'}"
    search = fake_search(tmp_path, rounds=2)
    study = open_study("c", storage, search, seed=0)
    assert optimize(study, search, 2, out=lambda _: None) == 2
    study = open_study("c", storage, search, seed=0)  # the same command again, asking for 3 in all
    lines = []
    assert optimize(study, search, 3, out=lines.append) == 1
    trials = optuna.load_study(study_name="c", storage=storage).trials
    assert len(trials) == 3 and all(t.state == TrialState.COMPLETE for t in trials)
    assert len({t.params["client.lr"] for t in trials}) == 3  # the continued sampler draws new points
    for t in trials:
        results = json.loads((Path(t.user_attrs["run_dir"]) / "results.json").read_text())
        assert t.value == results["final_validation"]["w4a4"] == min(1.0, 2 * t.params["client.lr"])
        assert t.intermediate_values == {1: pytest.approx(t.params["client.lr"]), 2: t.value}
    best = max(trials, key=lambda t: t.value)
    head, best_line, reproduce = summary(study, search)
    assert head == "study c: 3 trials (3 complete, 0 pruned, 0 failed)"
    assert best_line.startswith(f"best: trial {best.number}, w4a4 {best.value:.4f} (final validation accuracy)")
    assert reproduce == f"reproduce: python -m fedquant num_rounds=3 client.lr={best.params['client.lr']!r}"
    assert optimize(open_study("c", storage, search), search, 3) == 0  # done: nothing runs
    other = fake_search(tmp_path)
    other = Search(("num_rounds=5",), other.space, "w4a4", other.root)
    with pytest.raises(SetupError, match=r"study c was started with other settings \(overrides: num_rounds=3\); "):
        open_study("c", storage, other)


def test_validation_rounds_are_read_from_results_json():
    results = {"rounds": [{"round": 0, "validation": {"w4a4": {"accuracy": 0.1}}}, {"round": 1},
                          {"round": 2, "validation": {"w4a4": {"accuracy": 0.7}, "fp": {"accuracy": 0.9}},
                           "eval": {"w4a4": {"accuracy": 0.2}}}]}
    assert from_results(results, "w4a4") == {2: 0.7}  # round 0 (the initial model) left out; never "eval" (test)


# ------------------------------------------------------------------------------ one real study

@pytest.mark.slow
def test_a_real_study_runs_fedquant_per_trial_and_continues(tmp_path):
    """One trial of the default digits job, then the same command with --trials 2: one more (the
    continuation with fake runs is tested above; each real trial costs a Ray start)."""
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    argv = [sys.executable, "-m", "fedquant.tune", "--storage", storage, "--study-name", "e2e",
            "--root", str(tmp_path / "runs"), "--param", "client.lr=log:0.02:0.2", "--",
            "num_rounds=2", "eval.every=1", "eval.settings=[fp,w4a4]"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    first = subprocess.run([*argv[:3], "--trials", "1", *argv[3:]], capture_output=True, text=True, cwd=ROOT,
                           env=env, timeout=900)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    second = subprocess.run([*argv[:3], "--trials", "2", *argv[3:]], capture_output=True, text=True, cwd=ROOT,
                            env=env, timeout=600)
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-2000:]
    assert "1 trial so far, up to 2" in second.stdout
    trials = optuna.load_study(study_name="e2e", storage=storage).trials
    assert [t.number for t in trials] == [0, 1] and all(t.state == TrialState.COMPLETE for t in trials)
    for t in trials:
        results = json.loads((tmp_path / "runs" / f"trial_{t.number}" / "results.json").read_text())
        assert t.value == results["final_validation"]["w4a4"]  # validation, never the test "final"
        assert results["config"]["client"]["lr"] == t.params["client.lr"]
        assert t.intermediate_values == from_results(results, "w4a4") and sorted(t.intermediate_values) == [1, 2]
    out = second.stdout.strip().splitlines()
    assert out[1].startswith("trial 1  client.lr=") and out[1].endswith(" s") and "(validation)" in out[1]
    best = max(trials, key=lambda t: t.value)
    assert out[-1] == ("reproduce: python -m fedquant num_rounds=2 eval.every=1 'eval.settings=[fp,w4a4]' "
                       f"client.lr={best.params['client.lr']!r}")
