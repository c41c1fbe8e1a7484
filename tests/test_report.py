"""The sweep report: statistics (against hand computations and scipy), report.md / report.csv on
fixture sweeps with known numbers, the plots' axes, and the report on a real multirun."""

import csv
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as scipy_stats

from fedquant.reevaluate.__main__ import main as reevaluate
from fedquant.report.__main__ import main
from fedquant.report.make import REPORT_FILES, make_report
from fedquant.report.runs import ReportError, collect
from fedquant.report.stats import last_k_figure, mean_std, paired_difference
from fedquant.tracking.plots import (
    figure_accuracy_vs_bits,
    figure_methods_vs_bits,
    figure_methods_vs_round,
    figure_partition,
    plot_accuracy_vs_bits,
    plot_partition,
)
from tests.helpers import TINY

ROOT = Path(__file__).resolve().parent.parent

PROTOCOL = {"first_last_bits": 8, "batchnorm": "no BatchNorm in the model", "weight_range": "max",
            "act_range": "minmax", "ptq": "basic", "calibration_samples": 256,
            "validation_samples": 200}

# ------------------------------------------------------------------------------------ statistics


def _rounds(test: list[float], validation: list[float] | None = None) -> list[dict]:
    """Rounds 0..len(test): fp accuracy as given (round 0: 0.1), w4a4 0.2 below it."""
    rounds = []
    for r, acc in enumerate([0.1, *test]):
        entry = {"round": r, "eval": {"fp": {"accuracy": acc, "loss": 1.0},
                                      "w4a4": {"accuracy": acc - 0.2, "loss": 2.0}}}
        if validation is not None:
            v = [0.1, *validation][r]
            entry["validation"] = {"fp": {"accuracy": v, "loss": 1.0},
                                   "w4a4": {"accuracy": v - 0.2, "loss": 2.0}}
        rounds.append(entry)
    return rounds


def test_figure_is_the_mean_of_the_last_k_evaluations_after_round_0():
    rounds = _rounds([0.5, 0.6, 0.7, 0.8])
    fig = last_k_figure(rounds, "eval", 3)
    assert fig.values["fp"] == pytest.approx(0.7) and fig.values["w4a4"] == pytest.approx(0.5)
    assert fig.used == {"fp": 3, "w4a4": 3}
    assert last_k_figure(rounds, "eval", 1).values["fp"] == 0.8
    # more than the run has: all 4 evaluations after round 0 (round 0's 0.1 would make it 0.54)
    many = last_k_figure(rounds, "eval", 10)
    assert many.values["fp"] == pytest.approx(0.65) and many.used["fp"] == 4
    # rounds without an evaluation are skipped, order by round whatever the list order
    sparse = last_k_figure([rounds[4], {"round": 5}, rounds[3], {"round": 6, "eval": {"fp": {"accuracy": 0.3}}}],
                           "eval", 3)
    assert sparse.values == {"fp": pytest.approx((0.7 + 0.8 + 0.3) / 3), "w4a4": pytest.approx(0.55)}
    assert sparse.used == {"fp": 3, "w4a4": 2}
    assert last_k_figure(rounds, "validation", 3) is None
    with pytest.raises(ValueError):
        last_k_figure(rounds, "eval", 0)


def test_mean_and_sample_std():
    s = mean_std([0.5, 0.7, 0.9])
    assert (s.mean, s.std, s.n) == (pytest.approx(0.7), pytest.approx(0.2), 3)  # sqrt(0.08 / 2)
    assert mean_std([0.4]) == mean_std([0.4]).__class__(0.4, 0.0, 1)


def test_paired_interval_matches_the_hand_formula_and_scipy():
    a = {0: 0.80, 1: 0.82, 2: 0.85, 3: 0.79, 9: 0.99}  # seed 9 has no partner: ignored
    b = {0: 0.78, 1: 0.80, 2: 0.81, 3: 0.80, 7: 0.10}
    p = paired_difference(a, b)
    # d = [.02, .02, .04, -.01]: mean .0175, sd sqrt(1.275e-3 / 3), t_{.975,3} = 3.182446305...
    half = 3.1824463052837078 * math.sqrt(1.275e-3 / 3) / 2
    assert p.n == 4 and p.mean == pytest.approx(0.0175)
    assert (p.low, p.high) == (pytest.approx(0.0175 - half), pytest.approx(0.0175 + half))
    assert (p.low, p.high) == (pytest.approx(-0.0153039057), pytest.approx(0.0503039057))
    ci = scipy_stats.ttest_rel([a[s] for s in range(4)], [b[s] for s in range(4)]).confidence_interval()
    assert (p.low, p.high) == (pytest.approx(ci.low), pytest.approx(ci.high))
    assert p.verdict == "not resolved"


def test_paired_verdicts():
    a, b = {0: 0.81, 1: 0.84, 2: 0.79}, {0: 0.78, 1: 0.80, 2: 0.77}  # d = .03, .04, .02
    better = paired_difference(a, b)
    half = 4.302652729749462 * 0.01 / math.sqrt(3)  # t_{.975,2} * sd / sqrt(n)
    assert (better.low, better.high) == (pytest.approx(0.03 - half), pytest.approx(0.03 + half))
    assert better.low == pytest.approx(0.0051586229) and better.verdict == "A > B"
    worse = paired_difference(b, a)
    assert worse.high == pytest.approx(-0.0051586229) and worse.verdict == "A < B"
    one = paired_difference({0: 0.9, 1: 0.5}, {0: 0.1})
    assert (one.n, one.mean, one.verdict) == (1, pytest.approx(0.8), "not resolved (n=1)")
    assert math.isnan(one.low) and math.isnan(one.high)
    assert paired_difference({0: 0.9}, {1: 0.1}).verdict == "no shared seeds"
    same = paired_difference({0: 0.5, 1: 0.6}, {0: 0.5, 1: 0.6})  # d = 0, 0: [0, 0] holds 0
    assert (same.low, same.high, same.verdict) == (0.0, 0.0, "not resolved")


# ------------------------------------------------------------------------------ fixture sweeps

# method -> seed -> fp test accuracy at rounds 1..4 (the figure with --last 3: rounds 2..4)
TEST = {"fedavg": {0: [0.50, 0.60, 0.70, 0.80], 1: [0.52, 0.62, 0.72, 0.86], 2: [0.40, 0.60, 0.66, 0.69]},
        "qafedavg": {0: [0.55, 0.70, 0.74, 0.81], 1: [0.50, 0.74, 0.78, 0.82], 2: [0.45, 0.66, 0.70, 0.74],
                     3: [0.10, 0.90, 0.90, 0.90]}}  # seed 3: no fedavg partner


def _figure(accs: list[float], k: int = 3) -> float:
    return sum(accs[-k:]) / len(accs[-k:])


def _write_job(folder: Path, overrides: list[str], results: dict) -> None:
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (folder / "results.json").write_text(json.dumps(results))


def _results(strategy: str, seed: int, test: list[float], validation: list[float] | None = None,
             protocol: dict | None = PROTOCOL) -> dict:
    results = {"config": {"seed": seed, "strategy": {"name": strategy}, "dataset": {"name": "digits"}},
               "rounds": _rounds(test, validation), "final": {"fp": test[-1], "w4a4": test[-1] - 0.2},
               "per_profile": {}, "wall_time_s": 10.0}
    if protocol is not None:
        results["protocol"] = protocol
    return results


@pytest.fixture
def sweep(tmp_path) -> Path:
    """Two methods, validation = test - 0.05, the protocol recorded; one job failed."""
    job = 0
    for strategy, seeds in TEST.items():
        for seed, accs in seeds.items():
            _write_job(tmp_path / str(job), [f"seed={seed}", f"strategy={strategy}"],
                       _results(strategy, seed, accs, [a - 0.05 for a in accs]))
            job += 1
    (tmp_path / str(job) / ".hydra").mkdir(parents=True)
    (tmp_path / str(job) / ".hydra" / "overrides.yaml").write_text("- seed=4\n- strategy=fedavg\n")
    return tmp_path


def _section(markdown: str, heading: str) -> list[str]:
    """The table rows under ``heading`` (the lines after its header and separator)."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(heading))
    header = next(i for i in range(start, len(lines)) if lines[i].startswith("| method"))
    end = next((i for i in range(header, len(lines)) if not lines[i].startswith("|")), len(lines))
    return lines[header + 2:end]


def _cell(values: list[float]) -> str:
    s = mean_std(values)
    return f"{100 * s.mean:.2f} ± {100 * s.std:.2f}"


def test_report_sections_in_order_with_exact_cells(sweep, capsys):
    main([str(sweep), "--baseline", "strategy=fedavg"])
    out = capsys.readouterr().out
    md = (sweep / "report.md").read_text()
    assert out.startswith(md)
    order = ["## Protocol", "**Figure:**", "## Test accuracy (%)", "## Validation accuracy (%)",
             "## Paired test differences against `strategy=fedavg`", "## Test accuracy per round",
             "7 jobs; their wall times sum to", "Jobs without results"]
    positions = [md.index(h) for h in order]
    assert positions == sorted(positions)
    assert ("All 7 runs: first and last layers at 8 bits, the others at the evaluated bit-width; "
            "BatchNorm: no BatchNorm in the model; weight ranges: max; activation ranges: minmax; "
            "PTQ: basic, no bias correction; biases: float (evaluated before eval.integer_bias); calibration samples: 256; "
            "validation samples: 200.") in md
    assert "mean of its last 3 evaluations" in md and "Fewer than" not in md
    assert "choices are made on this table; test is only reported" in md

    test = _section(md, "## Test accuracy (%)")
    fedavg = [_figure(a) for a in TEST["fedavg"].values()]  # 0.70, 0.7333, 0.65
    qafedavg = [_figure(a) for a in TEST["qafedavg"].values()]
    assert test == [f"| strategy=fedavg | 3 | {_cell(fedavg)} | {_cell([f - 0.2 for f in fedavg])} |",
                    f"| strategy=qafedavg | 4 | {_cell(qafedavg)} | {_cell([f - 0.2 for f in qafedavg])} |"]
    assert test[0] == "| strategy=fedavg | 3 | 69.44 ± 4.19 | 49.44 ± 4.19 |"
    validation = _section(md, "## Validation accuracy (%)")
    assert validation[0] == f"| strategy=fedavg | 3 | {_cell([f - 0.05 for f in fedavg])} | {_cell([f - 0.25 for f in fedavg])} |"

    # paired over seeds 0-2 only: d = qafedavg - fedavg = .05, .78 - .7333, .05
    d = np.array(qafedavg[:3]) - np.array(fedavg)
    half = scipy_stats.t.ppf(0.975, 2) * d.std(ddof=1) / math.sqrt(3)
    row = f"| strategy=qafedavg | fp | {100 * d.mean():+.2f} | [{100 * (d.mean() - half):+.2f}, {100 * (d.mean() + half):+.2f}] | A > B | 3 |"
    assert _section(md, "## Paired")[0] == row
    assert row == "| strategy=qafedavg | fp | +4.89 | [+4.41, +5.37] | A > B | 3 |"  # by hand: sd(d) = .0019245
    assert out.strip().splitlines()[-1] == f"wrote report.md, report.csv, report.png, report_rounds.png in {sweep}"

    rows = {(r["method"], r["setting"]): r for r in csv.DictReader((sweep / "report.csv").open())}
    r = rows[("strategy=qafedavg", "fp")]
    assert float(r["mean_accuracy"]) == pytest.approx(np.mean(qafedavg)) and r["seeds"] == "4"
    assert (r["last_k"], r["min_evaluations"], r["val_seeds"], r["baseline"]) == ("3", "3", "4", "strategy=fedavg")
    assert float(r["val_mean_accuracy"]) == pytest.approx(np.mean(qafedavg) - 0.05)
    assert float(r["paired_diff"]) == pytest.approx(d.mean())
    assert float(r["paired_ci_low"]) == pytest.approx(d.mean() - half)
    assert (r["paired_verdict"], r["paired_seeds"]) == ("A > B", "3")
    assert rows[("strategy=fedavg", "fp")]["paired_diff"] == ""  # the baseline has no pair


def test_last_k_is_configurable_and_short_runs_are_named(sweep):
    md = make_report([sweep], last=5)
    assert "the mean of its last 4 evaluations at rounds >= 1 (`--last 5`;" in md  # what was averaged
    assert ("Fewer than 5 evaluations (the figure averages those the run has): "
            "`strategy=fedavg`: 3 of 3 runs (4 evaluations); `strategy=qafedavg`: 4 of 4 runs (4 evaluations).") in md
    everything = [sum(a) / 4 for a in TEST["fedavg"].values()]
    assert _section(md, "## Test accuracy (%)")[0].startswith(f"| strategy=fedavg | 3 | {_cell(everything)} |")
    assert "## Paired" not in md  # no --baseline: no paired table
    one = make_report([sweep], last=1)
    assert _section(one, "## Test accuracy (%)")[0].startswith(f"| strategy=fedavg | 3 | {_cell([0.80, 0.86, 0.69])} |")


def test_bad_baseline_and_last_are_one_line_errors(sweep, capsys):
    with pytest.raises(ReportError, match=r"--baseline 'fedavg' is not a method label; the labels are: "
                                          r"'strategy=fedavg', 'strategy=qafedavg'"):
        make_report([sweep], baseline="fedavg")
    for argv in (["--baseline", "fedavg"], ["--last", "0"]):
        with pytest.raises(SystemExit) as stop:
            main([str(sweep), *argv])
        err = capsys.readouterr().err
        assert stop.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1
    assert "--last must be at least 1, got 0" in err


def test_a_seed_twice_cannot_be_paired(sweep):
    _write_job(sweep / "a" / "0", ["seed=0", "strategy=fedavg"], _results("fedavg", 0, [0.5, 0.5, 0.5, 0.5]))
    with pytest.raises(ReportError, match="'strategy=fedavg' has two runs with seed 0"):
        make_report([sweep], baseline="strategy=qafedavg")


def test_old_runs_without_protocol_or_validation(tmp_path):
    for job, seed in enumerate((0, 1)):
        _write_job(tmp_path / str(job), [f"seed={seed}"], _results("qafedavg", seed, [0.5, 0.6], protocol=None))
    md = make_report([tmp_path], baseline="qafedavg")
    assert "All 2 runs: not recorded" in md and "## Validation" not in md
    assert "Fewer than 3 evaluations (the figure averages those the run has): `qafedavg`: 2 of 2 runs (2 evaluations)." in md
    assert _section(md, "## Test accuracy (%)") == ["| qafedavg | 2 | 55.00 ± 0.00 | 35.00 ± 0.00 |"]
    assert _section(md, "## Paired") == ["| (no other method) | | | | | |"]
    row = next(csv.DictReader((tmp_path / "report.csv").open()))
    assert (row["val_mean_accuracy"], row["min_evaluations"]) == ("", "2")


def test_differing_protocols_are_listed_per_method(tmp_path):
    mse = {**PROTOCOL, "first_last_bits": None, "act_range": "mse"}
    _write_job(tmp_path / "0", ["seed=0", "strategy=fedavg"], _results("fedavg", 0, [0.5]))
    _write_job(tmp_path / "1", ["seed=1", "strategy=fedavg"], _results("fedavg", 1, [0.5], protocol=None))
    _write_job(tmp_path / "2", ["seed=0", "strategy=qafedavg"], _results("qafedavg", 0, [0.5], protocol=mse))
    md = make_report([tmp_path])
    lines = md.splitlines()
    start = lines.index("Protocols differ between runs:")
    assert lines[start + 2].startswith("- `strategy=fedavg` (1 run): first and last layers at 8 bits")
    assert lines[start + 3] == "- `strategy=fedavg` (1 run): not recorded (results.json written before runs stated their protocol)"
    assert lines[start + 4].startswith("- `strategy=qafedavg` (1 run): every layer at the evaluated bit-width")
    assert "activation ranges: mse" in lines[start + 4]


# ------------------------------------------------------------ labels, figure rule, re-evaluation


def _arm(folder: Path, seed: int, overrides: list[str], client: dict, **extra) -> None:
    """A job of experiment fmnist_fedavg with ``client`` keys in its config and per-run keys that
    differ from job to job (seed, run dir, init_from, wandb name)."""
    results = _results("fedavg", seed, [0.5, 0.6, 0.7]) | extra
    results["config"] |= {"client": client, "init_from": f"runs/base/{seed}", "resume_from": f"{folder}",
                          "logger": {"name": "wandb", "group": folder.parent.name, "tags": [str(seed)]}}
    _write_job(folder, [f"seed={seed}", "+experiment=fmnist_fedavg", *overrides, f"hydra.run.dir={folder}",
                        f"init_from=runs/base/{seed}"], results)


def test_labels_name_the_override_that_tells_two_arms_apart(tmp_path):
    for seed in (0, 1):  # two sweeps, one arm each, reported together
        _arm(tmp_path / "constant" / str(seed), seed, [], {"lr_schedule": "constant", "lr": 0.02})
        _arm(tmp_path / "cosine" / str(seed), seed, ["client.lr_schedule=cosine"], {"lr_schedule": "cosine", "lr": 0.02})
    methods, _ = collect([tmp_path / "constant", tmp_path / "cosine"])
    assert {m: len(runs) for m, runs in methods.items()} == {"fmnist_fedavg client.lr_schedule=constant": 2,
                                                            "fmnist_fedavg client.lr_schedule=cosine": 2}
    md = make_report([tmp_path / "constant", tmp_path / "cosine"], tmp_path / "out",
                     baseline="fmnist_fedavg client.lr_schedule=constant")
    assert "| fmnist_fedavg client.lr_schedule=cosine | 2 |" in md


def test_labels_from_the_config_when_overrides_do_not_tell(tmp_path):
    # flwr run: no .hydra folder; the arms differ in the config only
    for i, lr in enumerate((0.02, 0.05, 0.02)):
        (tmp_path / str(i)).mkdir()
        results = _results("fedavg", i // 2, [0.5, 0.6]) | {"wall_time_s": 5.0}
        results["config"] |= {"client": {"lr": lr}, "simulation": {"device": f"cuda:{i}"}}
        (tmp_path / str(i) / "results.json").write_text(json.dumps(results))
    methods, _ = collect([tmp_path])
    assert {m: len(r) for m, r in methods.items()} == {"client.lr=0.02": 2, "client.lr=0.05": 1}
    # the same overrides, other evaluation options (a sweep and its re-evaluation reported together)
    _arm(tmp_path / "a" / "0", 0, [], {"lr": 0.02})
    _arm(tmp_path / "b" / "0", 0, [], {"lr": 0.02}, reevaluated={"ptq": "adaround"})
    json_b = json.loads((tmp_path / "b" / "0" / "results.json").read_text())
    json_b["config"]["eval"] = {"ptq": "adaround"}
    (tmp_path / "b" / "0" / "results.json").write_text(json.dumps(json_b))
    labels = list(collect([tmp_path / "a", tmp_path / "b"])[0])
    assert labels == ["fmnist_fedavg", "fmnist_fedavg eval.ptq=adaround reevaluated=true"]


def _titles(monkeypatch) -> dict[str, tuple]:
    """Captures what write_plots passes to the two plot functions."""
    import fedquant.report.plots as report_plots

    seen: dict[str, tuple] = {}
    monkeypatch.setattr(report_plots, "plot_methods_vs_bits", lambda *a: seen.setdefault("bits", a))
    monkeypatch.setattr(report_plots, "plot_methods_vs_round", lambda *a: seen.setdefault("rounds", a))
    return seen


@pytest.mark.parametrize(("evaluations", "said"), [(2, "the mean of its last 2 evaluations"),
                                                   (1, "its only evaluation"),
                                                   (3, "the mean of its last 3 evaluations")])
def test_the_figure_and_the_text_say_what_was_averaged(tmp_path, monkeypatch, evaluations, said):
    seen = _titles(monkeypatch)
    _write_job(tmp_path / "0", ["seed=0"], _results("fedavg", 0, [0.5, 0.6, 0.7][:evaluations]))
    md = make_report([tmp_path], last=3)
    assert f"a run's figure at a setting is {said} at rounds >= 1 (`--last 3`;" in md
    assert f"a run's figure: {said}\n" in seen["bits"][2] + "\n"
    assert "last 3" not in seen["bits"][2] or evaluations == 3


def test_mixed_counts_name_the_most_and_the_fewer(tmp_path, monkeypatch):
    seen = _titles(monkeypatch)
    _write_job(tmp_path / "0", ["seed=0"], _results("fedavg", 0, [0.5, 0.6, 0.7, 0.8]))
    _write_job(tmp_path / "1", ["seed=1"], _results("fedavg", 1, [0.5]))
    md = make_report([tmp_path], last=3)
    said = "the mean of its last 3 evaluations (of 1 where a run has only 1)"
    assert said in md and said in seen["bits"][2]


REDONE = {**PROTOCOL, "ptq": "adaround (500 iterations per layer) + bias correction", "weight_range": "mse",
          "bias": "int32 on s_x s_w (BatchNorm folded into the conv before it)"}


def _reevaluated(folder: Path, seed: int, protocol: dict) -> None:
    """A job as ``python -m fedquant.reevaluate --last 2`` writes it: two rounds, its options."""
    results = _results("fedavg", seed, [0.6, 0.7], protocol=protocol)
    results["rounds"] = [r | {"round": 70 + 5 * r["round"]} for r in results["rounds"][1:]]
    results |= {"reevaluated": {"checkpoints": ["c70.pt", "c75.pt"], "ptq": "adaround", "weight_range": "mse"},
                "training_wall_time_s": 600.0, "wall_time_s": 30.0}
    _write_job(folder, [f"seed={seed}", "+experiment=fmnist_fedavg"], results)


def test_a_reevaluated_sweep_says_its_post_training_options_and_training_time(tmp_path, monkeypatch):
    seen = _titles(monkeypatch)
    for seed in (0, 1):
        _reevaluated(tmp_path / str(seed), seed, REDONE)
    md = make_report([tmp_path])
    assert "PTQ: adaround (500 iterations per layer) + bias correction;" in md and "weight ranges: mse;" in md
    assert ("- `fmnist_fedavg` (2 runs): eval.ptq=adaround, eval.weight_range=mse (the others as the run had "
            "them); the models of rounds 75, 80") in md
    # the training's wall time, not the re-evaluation's (wall_time_s of a re-evaluated job)
    assert "2 jobs; their training wall times sum to 20.0 min (600-600 s per job); re-evaluating 2 jobs took 1.0 min." in md
    subtitle = ("post-training: PTQ adaround (500 iterations per layer) + bias correction; "
                "weights mse, activations minmax; int32 biases (re-evaluated)")
    assert all(title.replace("\n", " ").endswith(subtitle) for title in (seen["bits"][2], seen["rounds"][3]))
    assert list(seen["bits"][0]) == ["fmnist_fedavg"]


def test_differing_post_training_options_go_into_the_legend(tmp_path, monkeypatch):
    seen = _titles(monkeypatch)
    _write_job(tmp_path / "0", ["seed=0", "strategy=fedavg"], _results("fedavg", 0, [0.5]))
    _reevaluated(tmp_path / "1", 0, REDONE)
    make_report([tmp_path])
    legend = list(seen["bits"][0])
    assert legend[0] == "fedavg\n[PTQ basic, no bias correction; weights max, activations minmax; float biases]"
    assert legend[1] == ("fmnist_fedavg\n[PTQ adaround (500 iterations per layer) + bias correction; "
                         "weights mse, activations minmax; int32 biases (re-evaluated)]")
    assert "post-training" not in seen["bits"][2] and list(seen["rounds"][0]) == legend


# ------------------------------------------------------------------------------------- plots


def test_accuracy_vs_bits_starts_at_0_and_says_so(tmp_path):
    fig = figure_accuracy_vs_bits({"fp": 0.95, "w4a4": 0.93, "w2a2": 0.88}, "t", chance=0.1)
    ax = fig.axes[0]
    assert ax.get_ylim()[0] == 0 and ax.get_ylim()[1] >= 100  # autoscale would start at ~88
    assert ax.get_ylabel().endswith("axis from 0")
    chance = [line for line in ax.get_lines() if line.get_linestyle() == ":"]
    assert len(chance) == 1 and list(chance[0].get_ydata()) == [10.0, 10.0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["FP32", "W4A4", "W2A2"]
    path = plot_accuracy_vs_bits({"fp": 0.95}, tmp_path / "a.png", "t")  # outputs.py's call
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_methods_vs_bits_starts_at_0_with_chance_line():
    table = {"a": {"fp": (0.95, 0.01), "w4a4": (0.90, 0.02)}, "b": {"fp": (0.94, 0.01), "w2a2": (0.89, 0.0)}}
    ax = figure_methods_vs_bits(table, "t", chance=0.01).axes[0]
    assert ax.get_ylim()[0] == 0 and "axis from 0" in ax.get_ylabel()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["FP32", "W4A4", "W2A2"]
    assert [line.get_ydata()[0] for line in ax.get_lines() if line.get_linestyle() == ":"] == [1.0]
    assert "axis from 0" in figure_methods_vs_bits(table, "t").axes[0].get_ylabel()


def test_methods_vs_round_starts_at_round_0():
    curve = {"a": {0: {"fp": 0.1}, 1: {"fp": 0.5}, 2: {"fp": 0.7}}, "b": {0: {"fp": 0.12}, 2: {"fp": 0.6}}}
    ax = figure_methods_vs_round(curve, ["fp"], "t").axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert list(lines["a"].get_xdata()) == [0, 1, 2] and list(lines["a"].get_ydata()) == [10.0, 50.0, 70.0]
    assert list(lines["b"].get_xdata()) == [0, 2]
    assert ax.get_ylim()[0] == 0


@pytest.mark.parametrize("clients", [7, 40, 100, 130])
def test_partition_labels_every_client(tmp_path, clients):
    hist = np.ones((clients, 10), dtype=int)
    ax = figure_partition(hist, "t").axes[0]
    shown = min(clients, 100)
    assert [t.get_text() for t in ax.get_xticklabels()] == [str(i) for i in range(shown)]
    assert list(ax.get_xticks()) == list(range(shown))
    plot_partition(hist, tmp_path / "p.png", "t")  # outputs.py's call still saves
    assert (tmp_path / "p.png").stat().st_size > 1000


# ------------------------------------------------------------------------- real runs (slow)


def test_report_on_a_real_multirun(tmp_path, capsys):
    """The sweep, its report and the re-evaluation on the command line (the re-evaluation with other
    options and its report in process: python -m fedquant.reevaluate / .report call these mains)."""
    sweep = tmp_path / "sweep"
    proc = subprocess.run(
        [sys.executable, "-m", "fedquant", "-m", *TINY, "num_rounds=1", "eval.settings=[fp,w4a4]",
         "strategy=fedavg,qafedavg", "clients_per_round=3,7", f"hydra.sweep.dir={sweep}"],
        capture_output=True, text=True, cwd=ROOT, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # clients_per_round=7 > num_clients=6: those two jobs fail with one line each, the others run
    assert proc.stderr.count("error: clients_per_round=7 is not valid") == 2
    assert len(list(sweep.glob("*/results.json"))) == 2
    report = subprocess.run([sys.executable, "-m", "fedquant.report", str(sweep)], capture_output=True,
                            text=True, cwd=ROOT, timeout=120)
    assert report.returncode == 0, report.stderr
    lines = report.stdout.strip().splitlines()
    header = lines.index("| method | seeds | fp | w4a4 |")
    assert lines[header - 2] == "## Test accuracy (%)"
    table = lines[header + 2:lines.index("", header)]
    labels = {frozenset(line.split(" | ")[0].lstrip("| ").split(" ")) for line in table}
    # the failed jobs left no folders (they never started), so the methods differ only in strategy
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]  # jobs 0, 1 of 0-3
    assert labels == {frozenset({"strategy=fedavg"}), frozenset({"strategy=qafedavg"})}
    assert "Jobs without results" not in report.stdout
    runs = {r["config"]["strategy"]["name"]: r for r in (json.loads(p.read_text()) for p in sweep.glob("*/results.json"))}
    # one trained evaluation (round 1; round 0 never counts) and one seed: the cell is the final accuracy
    row = next(line for line in table if "strategy=fedavg" in line.split(" | ")[0])
    assert f"| {100 * runs['fedavg']['final']['w4a4']:.2f} |" in row  # one seed: no spread to show
    assert report.stdout.count(": 1 of 1 run (1 evaluation)") == 2  # fewer than --last 3, said so
    assert (sweep / "report.csv").is_file() and (sweep / "report.png").stat().st_size > 10_000
    assert (sweep / "report_rounds.png").stat().st_size > 10_000
    assert (sweep / "report_uplink.png").stat().st_size > 10_000  # every run counted its bytes
    assert lines[-1] == f"wrote {', '.join(REPORT_FILES)}, report_uplink.png in {sweep}"
    # the curves: rounds 0 and 1 evaluated, mean over the one seed = the job's own accuracies
    rows = lines[lines.index("| method | 0 | 1 |") + 2:]
    row = next(row for row in rows if "strategy=fedavg" in row)
    cells = [f"{100 * e['eval']['fp']['accuracy']:.1f} / {100 * e['eval']['w4a4']['accuracy']:.1f}"
             for e in runs["fedavg"]["rounds"]]
    assert row.strip("| ").split(" | ")[1:] == cells
    assert "2 jobs; their wall times sum to" in report.stdout

    # the final models again from their checkpoints: the run's own options give the run's numbers
    same, mse = tmp_path / "same", tmp_path / "mse"
    printed = {}
    proc = subprocess.run([sys.executable, "-m", "fedquant.reevaluate", str(sweep), "--out", str(same),
                           "--act-range", "minmax", "--last", "5"], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    printed[same] = proc.stdout
    capsys.readouterr()
    reevaluate([str(sweep), "--out", str(mse), "--act-range", "mse", "--last", "1"])
    printed[mse] = capsys.readouterr().out
    assert "note: --last 5 asked for 5 checkpoints, the run has 1" in printed[same]  # said, not silent
    assert re.search(r"final model: fp \d+\.\d\d", printed[same]) and re.search(r"final model: fp", printed[mse])
    for job in sweep.glob("*/results.json"):
        original = json.loads(job.read_text())
        redone = json.loads((same / job.parent.name / "results.json").read_text())
        assert redone["final"] == original["final"]
        assert redone["training_wall_time_s"] == original["wall_time_s"] != redone["wall_time_s"]
        again = json.loads((mse / job.parent.name / "results.json").read_text())
        assert again["reevaluated"]["act_range"] == "mse" and again["final"]["fp"] == original["final"]["fp"]
    main([str(mse)])
    report = capsys.readouterr().out
    assert "| method | seeds | fp | w4a4 |" in report and "activation ranges: mse" in report


def test_report_groups_continued_runs_by_method_not_by_checkpoint(tmp_path):
    jobs = {"a/6": ("seed=0", "+experiment=a", 0.5), "b/18": ("seed=1", "+experiment=a", 0.7),
            "b/7": ("seed=0", "+experiment=b", 0.9)}  # two sweep folders, reported together
    for name, (seed, experiment, acc) in jobs.items():
        (tmp_path / name / ".hydra").mkdir(parents=True)
        overrides = [seed, experiment, "num_rounds=80", f"resume_from=multirun/study/{name}"]
        (tmp_path / name / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
        (tmp_path / name / "results.json").write_text(json.dumps({"final": {"fp": acc}}))
    methods, missing = collect([tmp_path / "a", tmp_path / "b"])
    assert not missing
    assert {m: [r["final"]["fp"] for r in runs] for m, runs in methods.items()} == {"a": [0.5, 0.7], "b": [0.9]}
    proc = subprocess.run([sys.executable, "-m", "fedquant.report", str(tmp_path / "a"), str(tmp_path / "b")],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip() == "error: several sweeps given: say where the combined report goes with --out DIR"
    # with --out: results without rounds fall back to `final` (one evaluation each)
    md = make_report([tmp_path / "a", tmp_path / "b"], tmp_path / "both")
    assert _section(md, "## Test accuracy (%)") == ["| a | 2 | 60.00 ± 14.14 |", "| b | 1 | 90.00 |"]
    assert sorted(p.name for p in (tmp_path / "both").iterdir()) == sorted(REPORT_FILES)


def test_report_without_results_is_one_line_and_exit_2(tmp_path, capsys):
    with pytest.raises(ReportError, match="no results.json under"):  # a library error, not an exit
        make_report([tmp_path])
    with pytest.raises(SystemExit) as stop:
        main([str(tmp_path)])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.startswith("error: no results.json under") and err.count("\n") == 1
