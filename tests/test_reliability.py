"""Client faults, retries, rejected NaN replies, the divergence guard, checkpoints and exact resume after SIGKILL."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from flwr.app import ArrayRecord

from fedquant.app import run_experiment
from fedquant.experiment.workspace import build_quantized_model, federated_data
from fedquant.models.state import float_state
from fedquant.runtime.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from strategies import DivergenceError, TooFewReplies
from tests.helpers import TINY, make_config, strip_seconds
from tests.inprocess import (
    InProcessGrid,
    recording_strategy,
    run_experiment_inprocess,
    train_config,
)
from tests.test_strategies import setup_and_plan

ROOT = Path(__file__).resolve().parent.parent


def start_inprocess(*overrides, **strategy_kwargs):
    cfg = make_config(*TINY, *overrides)
    setup, plan = setup_and_plan(cfg)
    strategy = recording_strategy("fedavg", plan, **strategy_kwargs)
    model = build_quantized_model(setup.model, federated_data(setup.data).data)
    grid = InProcessGrid(setup, cfg["clients_per_round"])
    strategy.start(grid=grid, initial_arrays=ArrayRecord(float_state(model)), num_rounds=cfg["num_rounds"],
                   train_config=train_config(cfg))
    return strategy


def test_too_few_replies_retries_with_a_fresh_sample():
    strategy = start_inprocess("faults.client_failure_rate=0.5", "num_rounds=3", min_replies=3, max_retries=20)
    reports = strategy.reports.values()
    assert all(len(r.clients) == 3 for r in reports)
    assert sum(r.retries for r in reports) > 0 and sum(len(r.failures) for r in reports) > 0
    for r in reports:
        assert all(f.startswith("client ") and f.endswith("injected failure (faults.client_failure_rate)")
                   for f in r.failures)


def test_too_few_replies_can_stop_the_run():
    with pytest.raises(TooFewReplies, match=r"round \d: \d of 3 clients replied, fewer than strategy.min_replies=3; "
                                            r"stopping \(strategy.on_too_few_replies=stop\). Failures: client \d+"):
        start_inprocess("faults.client_failure_rate=0.5", "num_rounds=3", min_replies=3, on_too_few="stop")


def nan_clients(rate: float, rounds: int = 4) -> dict[int, list[int]]:
    """Per round, the sampled clients that reply NaN at ``faults.nan_client_rate=rate`` (TINY, seed 0)."""
    _, plan = setup_and_plan(make_config(*TINY, f"num_rounds={rounds}"))
    plan.nan_rate = rate
    return {r: [c for c in plan.sample_clients(r) if plan.injects_nan(r, c)] for r in range(1, rounds + 1)}


def test_nan_from_one_client_is_rejected_and_the_round_goes_on():
    """A NaN reply among finite ones is that client's rejected reply (named in the round's report),
    never aggregated; the run goes on (before issue 32 it stopped the run)."""
    bad = nan_clients(0.2)
    assert [len(bad[r]) for r in (1, 2, 3, 4)] == [0, 0, 1, 1]  # seed 0, rate 0.2: one client in rounds 3 and 4
    strategy = start_inprocess("num_rounds=4", "faults.nan_client_rate=0.2")
    for r, report in strategy.reports.items():
        assert report.failures == [f"client {c}: rejected reply: non-finite values (NaN/Inf) in array '1.weight'"
                                   for c in bad[r]]
        assert len(report.clients) == 3 - len(bad[r]) and not {c.partition for c in report.clients} & set(bad[r])


def test_nan_from_every_client_of_a_round_stops_the_run():
    """NaN from every client that replied is a diverged federation, not a faulty client: the run stops."""
    bad = nan_clients(0.5)
    first = next(r for r in bad if len(bad[r]) == 3)
    assert first == 3 and bad[1] and bad[2]  # rounds 1 and 2 go on without their NaN clients
    with pytest.raises(DivergenceError) as err:
        start_inprocess("num_rounds=4", "faults.nan_client_rate=0.5")
    named = "; ".join(f"client {c} (non-finite values (NaN/Inf) in array '1.weight')" for c in bad[first])
    assert str(err.value).startswith(f"round {first}: non-finite values from every client that replied: {named}; "
                                     "stopping, this round's global model is discarded")


def test_fault_injection_at_30_percent_completes_through_ray(tmp_path):
    cfg = make_config(*TINY, "num_clients=10", "clients_per_round=4", "num_rounds=3", "faults.client_failure_rate=0.3",
                      "eval.settings=[fp]")
    res = run_experiment(cfg, tmp_path)
    train = [r["train"] for r in res["rounds"][1:]]
    assert sum(t["failures"] for t in train) > 0 and "fp" in res["final"]
    for t in train:
        assert len(t["clients"]) + t["failures"] == 4 * (1 + t["retries"])
        assert all("injected failure" in f for f in t["failure_reasons"])


def test_corrupt_checkpoint_is_named_and_previous_kept(tmp_path):
    for r in (1, 2, 3):
        save_checkpoint(tmp_path, r, {"arrays": {"w": torch.ones(2) * r}, "config": {}}, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_r00002.pt", "checkpoint_r00003.pt"]
    newest = tmp_path / "checkpoint_r00003.pt"
    newest.write_bytes(newest.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=r"checkpoint_r00003.pt: corrupt or unreadable checkpoint .*the previous "
                                              r"checkpoint .*checkpoint_r00002.pt is intact"):
        load_checkpoint(newest)
    assert load_checkpoint(tmp_path / "checkpoint_r00002.pt")["arrays"]["w"].tolist() == [2.0, 2.0]
    proc = cli(f"resume_from={newest}", f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1
    assert "corrupt or unreadable checkpoint" in proc.stderr and "Traceback" not in proc.stderr


def cli(*args, **kw):
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    return subprocess.run([sys.executable, "-m", "fedquant", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=400, env=env, **kw)


def test_divergence_stops_and_keeps_last_good_checkpoint(diverged_run):
    """The command line on tests.helpers.DIVERGING (TINY, 4 rounds, faults.nan_client_rate=0.5, an
    offline W&B run: tests/conftest.py's diverged_run, whose W&B run tests/test_tracking.py reads)."""
    bad = nan_clients(0.5)
    first_bad = next(r for r in bad if len(bad[r]) == 3)  # every client of the round NaN: the federation diverged
    assert first_bad >= 2  # seed 0 and rate 0.5: rounds before it produce a checkpoint
    proc, tmp_path = diverged_run
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith(f"error: round {first_bad}: non-finite values from every client that replied")
    names = sorted(p.name for p in tmp_path.glob("checkpoint_r*.pt"))
    assert names[-1] == f"checkpoint_r{first_bad - 1:05d}.pt"
    assert f"[last good checkpoint: {tmp_path / names[-1]}; continue with resume_from={tmp_path}]" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert load_checkpoint(tmp_path / names[-1])["round"] == first_bad - 1


SLOW_ROUNDS = (*TINY, "num_rounds=4", "client.local_epochs=25", "eval.settings=[fp,w4a4]", "checkpoint.every=1",
               "strategy.server=fedadam", "+strategy.server_options.eta=0.01",
               # a compressed uplink with error feedback: each client's residual must survive the kill too
               "uplink.bits=4", "uplink.error_feedback=true", "downlink.bits=8")


def test_sigkill_mid_round_then_resume_matches_uninterrupted(tmp_path):
    """A run killed mid round 3, resumed on the command line, ends with the numbers of the same run
    uninterrupted. That one runs in process (tests/inprocess.py: the same Experiment and client
    handler on an in-process grid, one Ray start less), so the run through Ray also equals it."""
    killed_dir = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "fedquant", *SLOW_ROUNDS, f"hydra.run.dir={killed_dir}"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    tree = psutil.Process(proc.pid)
    deadline = time.time() + 300
    while not (killed_dir / "checkpoint_r00002.pt").exists():
        assert proc.poll() is None and time.time() < deadline, "run ended before its second checkpoint"
        time.sleep(0.05)
    family = [tree, *tree.children(recursive=True)]
    os.killpg(proc.pid, signal.SIGKILL)  # mid round 3: nothing gets a chance to clean up
    proc.wait()
    for p in family:  # Ray's services may sit in their own sessions
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    assert not (killed_dir / "results.json").exists() and not (killed_dir / "checkpoint_r00004.pt").exists()
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}  # as cli() runs it
    with (tmp_path / "resumed.err").open("w") as err:
        resumed = subprocess.Popen([sys.executable, "-m", "fedquant", *SLOW_ROUNDS, f"resume_from={killed_dir}",
                                    f"hydra.run.dir={tmp_path / 'resumed'}"], cwd=ROOT, env=env,
                                   stdout=subprocess.DEVNULL, stderr=err)
    try:  # the uninterrupted run meanwhile
        run_experiment_inprocess(make_config(*SLOW_ROUNDS), tmp_path / "full")
        resumed.wait(timeout=400)
    finally:
        resumed.kill()
        resumed.wait()
    assert resumed.returncode == 0, (tmp_path / "resumed.err").read_text()[-2000:]
    a = json.loads((tmp_path / "full" / "results.json").read_text())
    b = json.loads((tmp_path / "resumed" / "results.json").read_text())
    assert b["resumed_from"]["round"] in (2, 3)
    assert any((tmp_path / "resumed" / "client_state").rglob("r4.pt"))  # the residuals went on in the new folder
    assert b["final"] == a["final"]
    for ra, rb in zip(a["rounds"], b["rounds"], strict=True):
        assert ra.get("eval") == rb.get("eval")
        assert strip_seconds(ra) == strip_seconds(rb)


def test_extending_a_finished_run_equals_the_longer_run(tmp_path):
    """``resume_from=<finished run> num_rounds=<more>`` gives what ``num_rounds=<more>`` gives from
    the start (how docs/results.md continued the study's Dirichlet runs), with a learning-rate
    schedule over rounds, an averaged global model and weight freezing (whose states are
    checkpointed); the plain case is the SIGKILL test's. Frozen weights stay frozen over rounds."""
    schedules = ("client.lr_schedule=step", "client.lr_step_rounds=2", "eval.average=ema", "eval.ema_decay=0.5",
                 "client.freeze_threshold=0.001")
    common = (*TINY, "eval.every=2", "eval.settings=[fp,w2a2]", *schedules)
    longer = run_experiment_inprocess(make_config(*common, "num_rounds=3"), tmp_path / "longer")
    run_experiment_inprocess(make_config(*common, "num_rounds=2"), tmp_path / "short")
    extended = run_experiment_inprocess(make_config(*common, "num_rounds=3", f"resume_from={tmp_path / 'short'}"),
                                        tmp_path / "extended")
    assert extended["resumed_from"]["round"] == 2
    assert extended["final"] == longer["final"]
    assert [r.get("eval") for r in extended["rounds"]] == [r.get("eval") for r in longer["rounds"]]
    assert [strip_seconds(r) for r in extended["rounds"]] == [strip_seconds(r) for r in longer["rounds"]]
    payloads = [load_checkpoint(tmp_path / "longer" / f"checkpoint_r{r:05d}.pt") for r in (1, 2, 3)]
    resumed_final = load_checkpoint(tmp_path / "extended" / "checkpoint_r00003.pt")
    frozen = [p["server_state"]["freezing"]["frozen"] for p in payloads]
    assert set(frozen[0]) == {"3.weight"}  # the MLP's one unpinned layer
    first = frozen[0]["3.weight"]
    assert 0 < int(first.sum()) < int(frozen[-1]["3.weight"].sum())  # some froze in round 1, more later
    for p in payloads[1:] + [resumed_final]:
        assert bool(p["server_state"]["freezing"]["frozen"]["3.weight"][first].all())  # frozen for good
        assert torch.equal(p["arrays"]["3.weight"][first], payloads[0]["arrays"]["3.weight"][first])
    assert torch.equal(resumed_final["arrays"]["3.weight"], payloads[-1]["arrays"]["3.weight"])


@pytest.mark.parametrize("client", [{"lr_schedule": "cosine"}, {"lr_schedule": "constant", "dampen_weight": 0.02}])
def test_extending_a_run_whose_schedule_depends_on_num_rounds_is_refused(tmp_path, client):
    """Cosine lr and annealed dampening stretch with num_rounds: a continuation could not equal
    the longer run, so only the same num_rounds may resume; a step schedule may be extended."""
    from fedquant.experiment.resume import load_resume

    old = {"num_rounds": 2, "client": client}
    save_checkpoint(tmp_path / "short", 2, {"arrays": {}, "config": old})
    resume = {"resume_from": str(tmp_path / "short")}
    with pytest.raises(CheckpointError, match=r"cannot be continued with num_rounds=3 \(it ran with 2\): .*depends on num_rounds"):
        load_resume({**old, **resume, "num_rounds": 3}, tmp_path / "now", None)
    assert load_resume({**old, **resume}, tmp_path / "now", None)["round"] == 2
    step = {"num_rounds": 2, "client": {"lr_schedule": "step"}}
    save_checkpoint(tmp_path / "step", 2, {"arrays": {}, "config": step})
    assert load_resume({**step, "resume_from": str(tmp_path / "step"), "num_rounds": 3}, tmp_path / "now", None)["round"] == 2


def test_resume_true_finds_the_newest_checkpoint_of_another_run(tmp_path):
    from fedquant.runtime.checkpoint import find_checkpoint

    older, newer, current = tmp_path / "2026-11-22" / "10-00-00", tmp_path / "2026-11-23" / "09-00-00", tmp_path / "now"
    save_checkpoint(older, 5, {"arrays": {}, "config": {}})
    time.sleep(0.02)
    save_checkpoint(newer, 2, {"arrays": {}, "config": {}})
    time.sleep(0.02)
    save_checkpoint(current, 1, {"arrays": {}, "config": {}})
    assert find_checkpoint(None, tmp_path, exclude=current) == newer / "checkpoint_r00002.pt"
    assert find_checkpoint(str(older), tmp_path) == older / "checkpoint_r00005.pt"
    with pytest.raises(CheckpointError, match="resume=true: no checkpoint under"):
        find_checkpoint(None, tmp_path / "empty")
