"""The benchmarks run (tiny sizes) and print their ratios; timings themselves are not asserted."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def bench(*args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=ROOT, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_quant_overhead_runs():
    out = bench("benchmarks.timing.quant_overhead", "--dataset", "digits", "--model", "mlp", "--steps", "3", "--rounds", "1",
                "--batch-sizes", "32")
    assert len(re.findall(r"^\s+(channels_last|contiguous)\s+32\s+[\d.]+\s+[\d.]+\s+[\d.]+$", out, re.M)) == 2


def test_eval_cost_runs():
    assert re.search(r"ratio \d+\.\d\d", bench("benchmarks.timing.eval_cost", "--tiny", "--repeats", "1"))


@pytest.mark.slow
def test_sim_overhead_runs():
    out = bench("benchmarks.timing.sim_overhead", "--tiny", "--rounds", "2")
    assert re.search(r"ratio fedquant/plain \(steady state\): \d+\.\d\d", out)
    assert re.search(r"one local step: \d+\.\d ms wall, \d+\.\d ms CPU inside the workers; \d+\.\d ms wall, "
                     r"\d+\.\d ms CPU in this process with 1 thread", out)


@pytest.mark.slow
def test_scale_clients_runs():
    out = bench("benchmarks.timing.scale_clients", "--tiny", "--sizes", "6", "12", "--rounds", "2")
    assert re.search(r"peak RSS growth 6 -> 12 partitions: [+-]\d+\.\d%", out)


def test_ptq_cost_runs():
    out = bench("benchmarks.timing.ptq_cost", "--tiny", "--repeats", "1", "--iterations", "5", "20", "--settings", "w4a4")
    lines = re.findall(r"^\s+w4a4\s+\d+\.\d\d\s+\d+\.\d\d\s+\d+\.\d  \d+\.\d\d -> \d+\.\d\d$", out, re.M)
    assert len(lines) == 2 and "AdaRound 5 iterations" in out and "AdaRound 20 iterations" in out


def test_client_options_cost_runs():
    out = bench("benchmarks.timing.client_options_cost", "--tiny", "--rounds", "1", "--images", "64")
    for option in ("in-place distillation", r"oscillation dampening", r"oscillation counting \(freezing\)"):
        assert re.search(rf"with {option}: \d+\.\d\d ms; ratio \d+\.\d\d", out), out


def test_every_study_arm_is_a_valid_config_and_the_memory_arms_have_equal_bytes():
    from benchmarks.studies.study import study_arms
    from fedquant.app import check_config
    from fedquant.experiment.specs import experiment_specs
    from fedquant.experiment.workspace import build_quantized_model, federated_data
    from fedquant.learning.evaluation import model_bytes
    from tests.helpers import make_config

    studies = {"lowbit": 15, "pays": 7, "uplink": 14}
    for study, count in studies.items():
        arms = study_arms(study)
        assert len(arms) == count, (study, arms)
        for arm in arms:
            cfg = make_config(f"+experiment={study}/{arm}")
            check_config(cfg)
            assert cfg["quiet"] and cfg["checkpoint"]["keep"] == 3 and cfg["eval"]["every"] == 5
    configs = {arm: make_config(f"+experiment=lowbit/{arm}") for arm in study_arms("lowbit")}
    assert configs["qafedavg_cosine"]["client"]["lr_schedule"] == "cosine" and configs["fedavg"]["num_rounds"] == 80
    data_spec, spec = experiment_specs(configs["fedavg"])
    data = federated_data(data_spec).data
    float_bytes = model_bytes(build_quantized_model(spec, data), (None, None))
    for arm, cfg in configs.items():
        if arm.startswith("memory_"):
            weak = cfg["strategy"]["profiles"][1]
            bits = weak["bits"][0]
            setting = (None, None) if bits == "fp" else (bits, bits)
            weak_bytes = model_bytes(build_quantized_model(spec, data, width=weak.get("width", 1.0)), setting)
            assert 15 < float_bytes / weak_bytes < 16.5, (arm, float_bytes / weak_bytes)


def test_memory_study_figures_are_the_profiles_last_three_evaluations():
    from benchmarks.studies.memory_study import profile_figures

    rounds = [{"round": r, "eval": {"fp": {"accuracy": r / 10}, "w2a2@0.25": {"accuracy": r / 20}},
               "validation": {"fp": {"accuracy": r / 11}, "w2a2@0.25": {"accuracy": r / 22}}} for r in range(0, 6)]
    results = {"rounds": rounds, "config": {"strategy": {"profiles": [
        {"name": "strong", "share": 0.5, "bits": ["fp"]}, {"name": "weak", "share": 0.5, "bits": [2], "width": 0.25}]}}}
    figures = profile_figures(results)
    assert figures["strong"]["fp"] == ("fp", pytest.approx(0.4), pytest.approx(4 / 11))
    assert figures["weak"]["w2a2"] == ("w2a2@0.25", pytest.approx(0.2), pytest.approx(4 / 22))


def test_lowbit_select_chooses_the_highest_mean_validation_over_shared_seeds_and_ignores_test(tmp_path):
    from benchmarks.studies.lowbit_select import SETTINGS, arm_figures, select

    def write(arm: str, seed: int, val: float, test: float) -> None:
        rounds = [{"round": r, "eval": {s: {"accuracy": test} for s in SETTINGS},
                   "validation": {s: {"accuracy": val + (r - 5) / 100} for s in SETTINGS}} for r in range(1, 6)]
        job = tmp_path / arm / str(seed)
        job.mkdir(parents=True)
        (job / "results.json").write_text(json.dumps({"rounds": rounds, "config": {"seed": seed}}))

    write("a", 0, 0.80, 0.99), write("a", 1, 0.80, 0.99)
    write("b", 0, 0.82, 0.50), write("b", 1, 0.70, 0.50), write("b", 2, 0.99, 0.50)  # seed 2 is not shared
    figures = {arm: arm_figures(tmp_path, arm) for arm in ("a", "b")}
    # last 3 validation evaluations: val - 0.02, val - 0.01, val -> figure val - 0.01
    assert figures["b"][0]["w2a2"] == (pytest.approx(50.0), pytest.approx(81.0))
    chosen, scores, seeds = select(figures)
    assert seeds == [0, 1] and chosen == "a"
    assert scores == {"a": pytest.approx(79.0), "b": pytest.approx(75.0)}
    with pytest.raises(ValueError, match="share no seed"):
        select({"a": {0: figures["a"][0]}, "b": {1: figures["b"][1]}})


def test_headline_pair_chooses_each_sides_option_per_setting_on_validation_only():
    from benchmarks.studies.headline_pair import choose

    basic = {0: {"fp": (90.0, 80.0), "w2a2": (99.0, 60.0)}, 1: {"fp": (90.0, 82.0), "w2a2": (99.0, 62.0)}}
    tuned = {0: {"w2a2": (10.0, 70.0)}, 1: {"w2a2": (10.0, 70.0)}}  # worse on test, better on validation
    options = {"basic": basic, "tuned": tuned}
    assert choose(options, "w2a2") == "tuned"
    assert choose(options, "fp") == "basic"  # the only option that evaluated fp
    assert choose(options, "w4a4") is None


def test_study_figures_are_the_last_evaluations_and_the_table_pairs_them(tmp_path):
    from benchmarks.studies.figures import collect, table

    def write(arm: str, seed: int, accuracies: list[float]) -> None:
        rounds = [{"round": 0, "eval": {"w2a2": {"accuracy": 0.1}}}]
        rounds += [{"round": 5 * (i + 1), "eval": {"w2a2": {"accuracy": a}}, "validation": {"w2a2": {"accuracy": a - 0.01}}}
                   for i, a in enumerate(accuracies)]
        job = tmp_path / "root" / arm / str(seed)
        job.mkdir(parents=True)
        (job / "results.json").write_text(json.dumps({"rounds": rounds, "wall_time_s": 10.0,
                                                      "protocol": {"ptq": "basic", "weight_range": "max"}}))

    for seed, (a, b) in enumerate([(0.80, 0.70), (0.82, 0.71), (0.81, 0.73)]):
        write("qat", seed, [0.5, a - 0.01, a, a + 0.01])  # last 3: mean a
        write("ptq", seed, [0.5, b, b, b])
    path = collect(tmp_path / "root", [], tmp_path / "data" / "fig", last=3)
    rows = path.read_text().splitlines()
    assert rows[0] == "arm,seed,split,setting,figure,rounds,ptq,training_wall_time_s"
    assert "qat,0,test,w2a2,0.800000,10;15;20,basic max,10.0" in rows
    assert json.loads((tmp_path / "data" / "fig.env.json").read_text())["versions"]["torch"].startswith("2.")
    text = table(path, [("qat", "ptq")], ["w2a2"])
    # d = 0.10, 0.11, 0.08: mean 9.67 points, s_d = 1.528, t_{0.975,2} = 4.303 -> +-3.79
    assert "| qat | 81.00 ± 1.00 (80.00) n=3 |" in text
    assert "| qat - ptq | +9.67 [+5.87, +13.46] A > B (n=3) |" in text
    for seed, c in enumerate([0.60, 0.90, 0.75]):  # best on test (0.75), worse on validation
        write("lucky", seed, [0.5, 0.3, 0.3, 0.3])
        rounds = json.loads((tmp_path / "root" / "lucky" / str(seed) / "results.json").read_text())
        for r in rounds["rounds"][1:]:
            r["eval"]["w2a2"]["accuracy"] = c
        (tmp_path / "root" / "lucky" / str(seed) / "results.json").write_text(json.dumps(rounds))
    path = collect(tmp_path / "root", [], tmp_path / "data" / "fig", last=3)
    text = table(path, [("best", "ptq")], ["w2a2"], {"best": ["lucky", "qat"]})
    assert "| best | 81.00 ± 1.00 (80.00) n=3 |" in text and "best w2a2: qat (validation 80.00)" in text
    text = table(path, [], ["w2a2"], contrasts=[("qat:w2a2", "ptq:w2a2"), ("qat:w2a2", "ptq:w9a9")])
    assert "| qat:w2a2 - ptq:w2a2 | +9.67 [+5.87, +13.46] A > B (n=3) |" in text  # the pair above, by setting
    assert "| qat:w2a2 - ptq:w9a9 | no shared seeds |" in text
