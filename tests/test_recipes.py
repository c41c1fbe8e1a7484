"""Warm-start recipes (issue 28): float rounds before QAT (strategy.qat_from_round), the lowest
bit-widths entering gradually (strategy.progressive_rounds), and a run started from another run's
final model (init_from); each exact under resume."""

from __future__ import annotations

import pytest
import torch

from fedquant.experiment.config import ConfigError
from fedquant.federation.bitwidths import parse_settings
from fedquant.federation.plan import TrainingPlan
from fedquant.federation.profiles import Profile
from fedquant.federation.schedule import BitSchedule
from fedquant.runtime.checkpoint import CheckpointError, load_checkpoint
from tests.helpers import TINY, make_config, strip_seconds
from tests.inprocess import run_experiment_inprocess

B = parse_settings([2, 3, 4, 6, 8, "fp"], "B")


def names(settings) -> list[str]:
    return ["fp" if w is None else f"{w}" for w, _ in settings]


def test_progressive_schedule_admits_the_highest_bits_first():
    """R = 3, P = 4, k = 5 quantized settings: n(r) = min(5, 1 + floor(4 (r - 3) / 4)) = r - 2
    from round 3 (1, 2, 3, 4, 5), float rounds before it; fp in B always admitted; B's order kept."""
    schedule = BitSchedule(qat_from_round=3, progressive_rounds=4)
    expected = {1: ["fp"], 2: ["fp"], 3: ["8", "fp"], 4: ["6", "8", "fp"], 5: ["4", "6", "8", "fp"],
                6: ["3", "4", "6", "8", "fp"], 7: ["2", "3", "4", "6", "8", "fp"], 9: ["2", "3", "4", "6", "8", "fp"]}
    assert {r: names(schedule.at(r, B)) for r in expected} == expected
    assert names(BitSchedule(1, 0).at(1, B)) == names(B)  # no recipe: B from round 1
    mixed = parse_settings(["w4a8", "w8a8", "w2a2", "w4a4"], "B")  # ordered by weight, then activation bits
    assert [BitSchedule(1, 4).at(r, mixed) for r in (1, 2, 3, 4, 5)] == [  # n = 1, 1, 2, 3, 4
        [(8, 8)], [(8, 8)], [(4, 8), (8, 8)], [(4, 8), (8, 8), (4, 4)], mixed]


def test_a_profile_the_round_does_not_reach_trains_at_its_highest_setting():
    plan = TrainingPlan("qafedavg", "per_round", parse_settings([2, 4, 8], "B"), 4, 4, 0,
                        [Profile("npu", 0.5, (8,)), Profile("mcu", 0.5, (2, 4))],
                        bit_schedule=BitSchedule(qat_from_round=2, progressive_rounds=3))
    by_profile = {plan.profile_name(c): c for c in range(4)}
    npu, mcu = by_profile["npu"], by_profile["mcu"]
    assert plan.allowed(npu, 1) == plan.allowed(mcu, 1) == [(None, None)]  # float warm start
    # k = 3, n(r) = 1 + floor(2 (r - 2) / 3): B_2 = B_3 = {8}, B_4 = {8, 4}, B_5 = B
    assert plan.allowed(npu, 2) == [(8, 8)] and plan.allowed(mcu, 2) == [(4, 4)]  # mcu: its highest
    assert plan.allowed(mcu, 3) == [(4, 4)] and plan.allowed(mcu, 4) == [(4, 4)]
    assert plan.allowed(mcu, 5) == [(2, 2), (4, 4)]
    assert plan.assignment(1, mcu) == ("fixed", ["fp"])


@pytest.mark.parametrize(("overrides", "message"), [
    (["strategy=fedavg", "strategy.qat_from_round=3"], "strategy.qat_from_round=3 schedules quantization-aware"),
    (["strategy.bits=[fp]", "strategy.progressive_rounds=2"], "strategy.progressive_rounds=2 schedules"),
    (["strategy.qat_from_round=0"], "strategy.qat_from_round=0 is not valid: allowed is an integer >= 1"),
    (["init_from=/nonexistent/run"], "init_from='/nonexistent/run' is not valid: no such file or directory"),
])
def test_bad_recipes_are_one_line(overrides, message):
    from fedquant.app import check_config

    with pytest.raises(ConfigError, match=message):
        check_config(make_config(*overrides))


COMMON = (*TINY, "strategy.sampling=per_round", "eval.settings=[fp,w2a2]", "strategy.qat_from_round=2",
          "strategy.progressive_rounds=2")


def test_recipes_train_as_scheduled_and_resume_exactly(tmp_path):
    longer = run_experiment_inprocess(make_config(*COMMON, "num_rounds=4"), tmp_path / "longer")
    used = [set(r["train"]["bits_used"]) for r in longer["rounds"] if "train" in r]
    assert used[0] == {"fp"}  # round 1: float warm start
    # R = 2, P = 2, k = 5: n(2) = 1 (B_2 = {8}), n(3) = 1 + 4 // 2 = 3 ({8, 6, 4}), n(4) = 5 (all of B)
    assert used[1] == {"w8a8"}
    assert used[2] and used[2] <= {"w8a8", "w6a6", "w4a4"}
    assert used[3] <= {"w8a8", "w6a6", "w4a4", "w3a3", "w2a2"}
    run_experiment_inprocess(make_config(*COMMON, "num_rounds=2"), tmp_path / "short")
    extended = run_experiment_inprocess(make_config(*COMMON, "num_rounds=4", f"resume_from={tmp_path / 'short'}"),
                                        tmp_path / "extended")
    assert extended["final"] == longer["final"]
    assert extended["wall_time_s"] > 0  # the in-process run's own time is 0: the rounds before the resume count
    assert [strip_seconds(r) for r in extended["rounds"]] == [strip_seconds(r) for r in longer["rounds"]]
    a, b = (load_checkpoint(tmp_path / run / "checkpoint_r00004.pt")["arrays"] for run in ("longer", "extended"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_init_from_starts_where_another_run_ended(tmp_path):
    source = run_experiment_inprocess(make_config(*TINY, "strategy=fedavg", "eval.settings=[fp,w4a4]"), tmp_path / "a")
    started = run_experiment_inprocess(make_config(*TINY, "num_rounds=1", "eval.settings=[fp,w4a4]",
                                                   f"init_from={tmp_path / 'a'}"), tmp_path / "b")
    assert started["rounds"][0]["round"] == 0
    assert started["rounds"][0]["eval"] == source["rounds"][-1]["eval"]  # round 0 here = the source's final model
    assert started["initialized_from"]["round"] == 2 and started["initialized_from"]["strategy"] == "fedavg"
    with pytest.raises(CheckpointError, match=r"^init_from=.*holds another model than this run's model.name=mlp"):
        run_experiment_inprocess(make_config(*TINY, "+model.options.hidden=[16]", f"init_from={tmp_path / 'a'}"),
                                 tmp_path / "c")
