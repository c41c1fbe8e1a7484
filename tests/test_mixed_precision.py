"""Mixed precision under a byte budget (issue 29, item 3): the exact knapsack, the per-layer byte
count, the server's assignment per profile in results.json and the report, and bad budgets."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch

from fedquant.app import check_config
from fedquant.experiment.keys import ConfigError
from fedquant.experiment.specs import experiment_specs, server_evaluator
from fedquant.experiment.workspace import federated_data
from fedquant.models import build_model
from fedquant.models.state import float_state
from fedquant.quant import LayerBits, QuantConfig, quant_layers, quantize_model
from fedquant.quant.mixed_precision import BudgetError, brute_force, solve
from fedquant.quant.size import model_bytes, other_bits
from fedquant.report.tables import mixed_precision_markdown
from tests.helpers import TINY, make_config
from tests.inprocess import run_experiment_inprocess
from tests.test_first_run import cli, one_line

MCU = "{name: mcu, share: 0.5, bits: [2, 4, 8], budget: %s}"
PROFILES = "strategy.profiles=[{name: phone, share: 0.5, bits: [8]}, " + MCU + "]"
UNPINNED = "quantization.pin_first_last=false"


def test_the_knapsack_is_the_brute_force_optimum_and_never_over_budget():
    rng = np.random.default_rng(0)
    for trial in range(200):  # random instances: 1-5 layers, 1-3 options, budgets from tight to loose
        layers, options = int(rng.integers(1, 6)), int(rng.integers(1, 4))
        costs = [rng.integers(10, 1000, size=options).tolist() for _ in range(layers)]
        sensitivity = [rng.normal(size=options).tolist() for _ in range(layers)]
        fixed = int(rng.integers(0, 100))
        budget = fixed + sum(min(c) for c in costs) + int(rng.integers(0, 1500))
        best, got = brute_force(sensitivity, costs, budget, fixed), solve(sensitivity, costs, budget, fixed)
        assert got.bits <= budget and got.sensitivity == pytest.approx(best.sensitivity, abs=1e-9), trial
        assert got.bits == fixed + sum(c[j] for c, j in zip(costs, got.options, strict=True))


def test_the_knapsack_is_exact_at_the_scale_of_a_trained_models_sensitivities():
    """Loss changes of 1e-5 (a trained layer at 4-8 bits): below HiGHS' absolute gap unless the
    objective is rescaled; ties go to fewer bits; a NaN (a diverged model) is the worst option."""
    rng = np.random.default_rng(1)
    for trial in range(300):
        layers, options = int(rng.integers(1, 6)), int(rng.integers(1, 4))
        costs = [rng.integers(10, 1000, size=options).tolist() for _ in range(layers)]
        sensitivity = [(1e-5 * rng.normal(size=options)).tolist() for _ in range(layers)]
        budget = sum(min(c) for c in costs) + int(rng.integers(0, 1500))
        best, got = brute_force(sensitivity, costs, budget), solve(sensitivity, costs, budget)
        assert got.sensitivity <= best.sensitivity + 1e-15, trial
    assert solve([[0.0, 0.0], [0.0, 0.0]], [[5, 10], [5, 10]], 100).options == (0, 0)  # a tie: fewer bits
    assert solve([[float("nan"), 0.1], [0.0, 0.2]], [[5, 10], [5, 10]], 100).options == (1, 0)


def test_a_budget_below_the_smallest_assignment_is_refused():
    with pytest.raises(BudgetError, match="the smallest assignment takes 25 bits, over the budget of 24"):
        solve([[0.0, 1.0], [0.0, 1.0]], [[10, 5], [10, 5]], 24, fixed_bits=15)
    assert brute_force([[0.0, 1.0], [0.0, 1.0]], [[10, 5], [10, 5]], 24, fixed_bits=15) is None


def hand_count(model: torch.nn.Module, bits: list[tuple[int, int]]) -> int:
    """Bytes by hand for float scales, per-channel weights and a per-tensor input: weights at b_w,
    4 + 1 bytes per output channel, 4 + 1 bytes per input, every other parameter at 4 bytes."""
    total = 0
    for layer, (w, a) in zip(quant_layers(model), bits, strict=True):
        total += layer.weight.numel() * w + 8 * 5 * layer.weight.shape[0] + 8 * 5 * (a is not None)
    weights = {id(layer.weight) for layer in quant_layers(model)}
    total += sum(32 * p.numel() for p in model.parameters() if id(p) not in weights)
    return math.ceil(total / 8)


@pytest.fixture(scope="module")
def digits():
    from fedquant.data import load_dataset
    return load_dataset("digits")


def test_model_bytes_of_a_per_layer_assignment_is_the_hand_count(digits):
    model = quantize_model(build_model("mlp", digits), QuantConfig(8, 8))
    for bits in itertools.product([(2, 2), (4, 8), (8, 8)], repeat=3):
        assert model_bytes(model, LayerBits(bits)) == hand_count(model, list(bits))
    assert model_bytes(model, LayerBits([(4, 4)] * 3)) == model_bytes(model, (4, 4))


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory):
    """QAFedAvg per layer; a microcontroller class with 1/10 of the float bytes."""
    cfg = make_config(*TINY, UNPINNED, "strategy=qafedavg", "strategy.bits=[2,4,8]", "strategy.sampling=per_layer",
                      "num_rounds=3", PROFILES % "'1/10'")
    out = tmp_path_factory.mktemp("mixed")
    return cfg, run_experiment_inprocess(cfg, out), out


def test_the_server_tests_its_assignment_within_the_budget(mixed_run):
    cfg, results, _ = mixed_run
    a = results["mixed_precision"]["mp_mcu"]
    assert a["layers"] == ["1", "3", "5"] and len(a["bits"]) == 3 and set(a["bits"]) <= {"w2a2", "w4a4", "w8a8"}
    float_bytes = results["model_bytes"]["fp"]
    assert a["budget_bytes"] == float_bytes // 10 and a["model_bytes"] <= a["budget_bytes"]
    bits = [(int(b[1]), int(b[3])) for b in a["bits"]]
    fed = federated_data(experiment_specs(cfg)[0])
    evaluator = server_evaluator(cfg, fed)
    assert a["model_bytes"] == hand_count(evaluator.model, bits) == results["model_bytes"]["mp_mcu"]
    assert results["per_profile"]["mcu"]["mixed"] == results["final"]["mp_mcu"]
    assert results["per_profile_model_bytes"]["mcu"]["mixed"] == a["model_bytes"]
    assert "cross-entropy change on the calibration images" in results["mixed_precision"]["measure"]
    text = mixed_precision_markdown({"qafedavg": [results]})
    assert f"| qafedavg | 0 | mp_mcu | 1 {a['bits'][0]}, 3 {a['bits'][1]}, 5 {a['bits'][2]} |" in text


def test_every_evaluation_records_its_assignment_and_a_resume_keeps_them(mixed_run, tmp_path):
    cfg, results, run_dir = mixed_run
    evaluated = [r for r in results["rounds"] if "eval" in r]
    assert all(set(r["mixed_precision"]) == {"mp_mcu"} for r in evaluated)
    assert evaluated[-1]["mixed_precision"]["mp_mcu"] == results["mixed_precision"]["mp_mcu"]
    resumed = run_experiment_inprocess(make_config(*TINY, UNPINNED, "strategy=qafedavg", "strategy.bits=[2,4,8]",
                                                   "strategy.sampling=per_layer", "num_rounds=3", PROFILES % "'1/10'",
                                                   f"resume_from={run_dir}"), tmp_path / "resumed")
    assert resumed["mixed_precision"] == results["mixed_precision"]  # from the checkpoint, not re-measured
    assert resumed["model_bytes"]["mp_mcu"] == results["model_bytes"]["mp_mcu"]
    assert resumed["per_profile_model_bytes"] == results["per_profile_model_bytes"]


def test_the_assignment_is_the_optimum_of_the_measured_sensitivities(mixed_run):
    """Every feasible assignment tried by brute force on the evaluator's own sensitivities: the
    chosen one is the best."""
    cfg, _, _ = mixed_run
    fed = federated_data(experiment_specs(cfg)[0])
    evaluator = server_evaluator(cfg, fed)
    model = evaluator.model
    state = {k: v.clone() for k, v in float_state(model).items()}  # the initial model (deploy rewrites model's own)
    budget = evaluator.budgets["mp_mcu"]
    d = evaluator.sensitivities(state, budget.options)
    assert len(d) == 3 and all(len(row) == 3 for row in d)
    assert d[0][2] == pytest.approx(evaluator.sensitivities(state, budget.options)[0][2])  # deterministic
    chosen = evaluator.assign(state, "mp_mcu")
    costs = budget.costs(model)
    best = brute_force(d, costs, 8 * budget.bytes_for(model), other_bits(model))
    assert [budget.options[j] for j in best.options] == list(chosen)


def test_pinned_layers_cost_nothing_to_choose(digits):
    cfg = make_config(*TINY, "model=cnn", "dataset=digits", PROFILES % "0.3")
    fed = federated_data(experiment_specs(cfg)[0])
    evaluator = server_evaluator(cfg, fed)
    state = {k: v.clone() for k, v in float_state(evaluator.model).items()}
    d = evaluator.sensitivities(state, evaluator.budgets["mp_mcu"].options)
    pinned = [layer.pinned for layer in quant_layers(evaluator.model)]
    assert pinned[0] and pinned[-1] and not any(pinned[1:-1])
    assert d[0] == [0.0, 0.0, 0.0] and d[-1] == [0.0, 0.0, 0.0]


@pytest.mark.parametrize(("overrides", "message"), [
    ([UNPINNED, PROFILES % 100], "strategy.profiles: mcu's budget=100 (100 bytes) is below the smallest model its "
                                 "layer bits ['w2a2', 'w4a4', 'w8a8'] give, 6,089 bytes; raise the budget or allow fewer bits"),
    ([PROFILES % "0.1"], "strategy.profiles: mcu's budget needs a model with at least two layers to give different "
                         "bits, and only 1 of its 3 quantized layers is not pinned; remove the budget or set "
                         "quantization.pin_first_last=false"),
])
def test_budgets_the_model_cannot_meet_are_one_line(overrides, message):
    cfg = make_config(*TINY, *overrides)
    with pytest.raises(ConfigError) as err:
        server_evaluator(cfg, federated_data(experiment_specs(cfg)[0]))
    assert str(err.value) == message


@pytest.mark.parametrize(("profile", "start"), [
    ("{name: mcu, share: 1.0, bits: [4], budget: a lot}",
     "strategy.profiles[0].budget='a lot' is not valid: allowed is bytes"),
    ("{name: mcu, share: 1.0, bits: [4], budget: 1.5}", "strategy.profiles[0].budget=1.5 is out of range"),
    ("{name: mcu, share: 1.0, bits: [4], budget: 0.5, layer_bits: [fp]}",
     "strategy.profiles[0].budget needs quantized settings for its layers: strategy.profiles[0].layer_bits=['fp']"),
    ("{name: mcu, share: 1.0, bits: [4], layer_bits: [2, 4]}", "strategy.profiles[0].layer_bits is only used with a budget"),
])
def test_bad_budget_keys_are_config_errors(profile, start):
    with pytest.raises(ConfigError) as err:
        check_config(make_config(UNPINNED, f"strategy.profiles=[{profile}]"))
    assert str(err.value).startswith(start)


def test_a_budget_below_the_smallest_model_is_one_line_exit_2_and_leaves_no_run_folder(tmp_path):
    proc = cli(UNPINNED, "strategy.profiles=[{name: mcu, share: 1.0, bits: [4], budget: 100}]", "quiet=true",
               f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 2
    assert one_line(proc).startswith("error: strategy.profiles: mcu's budget=100 (100 bytes) is below the smallest model")
    assert not (tmp_path / "run").exists()


def test_a_budget_over_a_sub_model_is_met_on_that_sub_model():
    cfg = make_config(*TINY, UNPINNED, "strategy.profiles=[{name: big, share: 0.5, bits: [8]}, "
                                       "{name: mcu, share: 0.5, bits: [2, 4], width: 0.5, budget: 0.1}]")
    evaluator = server_evaluator(cfg, federated_data(experiment_specs(cfg)[0]))
    level = next(iter(evaluator.levels.values()))
    assert "mp_mcu" in level.budgets and not evaluator.full.budgets
    sub = level.model
    assert level.budgets["mp_mcu"].bytes_for(sub) == model_bytes(sub, (None, None)) // 10  # of the sub-model's bytes


def test_the_export_writes_the_assignment_and_onnxruntime_scores_it(mixed_run, tmp_path):
    """mixed.onnx holds each layer at its assigned bits (its encodings say so), and onnxruntime
    with its default session options scores the simulated accuracy the run reported."""
    pytest.importorskip("onnxruntime")
    from fedquant.export.run import export_run

    _, results, run_dir = mixed_run
    lines: list[str] = []
    export_run(run_dir, tmp_path / "export", full_check=True, log=lines.append)
    enc = json.loads((tmp_path / "export" / "mcu" / "mixed.encodings.json").read_text())
    a = results["mixed_precision"]["mp_mcu"]
    assert enc["mixed_precision"] == a
    weight_bits = [enc["param_encodings"][f"fc{layer}.weight"]["bitwidth"] for layer in a["layers"]]
    assert weight_bits == [int(b[1]) for b in a["bits"]]
    line = next(x for x in lines if x.strip().startswith("mp_mcu"))
    simulated = 100 * results["final"]["mp_mcu"]
    assert f"simulated {simulated:.2f} onnxruntime {simulated:.2f} onnxruntime_default {simulated:.2f}" in line
    assert f"bits per layer {' '.join(a['bits'])}" in line


def test_a_re_evaluation_re_solves_and_records_the_assignment(mixed_run, tmp_path):
    from fedquant.reevaluate.jobs import reevaluate_job

    _, results, run_dir = mixed_run
    new = reevaluate_job(run_dir, tmp_path, {"act_range": "percentile"}, last=2)
    assert [set(r["mixed_precision"]) for r in new["rounds"]] == [{"mp_mcu"}, {"mp_mcu"}]
    a = new["mixed_precision"]["mp_mcu"]
    assert new["mixed_precision"]["measure"] == results["mixed_precision"]["measure"]
    assert a["budget_bytes"] == results["mixed_precision"]["mp_mcu"]["budget_bytes"] >= a["model_bytes"]
    assert new["per_profile"]["mcu"]["mixed"] == new["final"]["mp_mcu"]
