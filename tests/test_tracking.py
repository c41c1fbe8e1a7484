"""Local results, plots, W&B offline run files and the sweep report, from real small runs."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from fedquant.app import run_experiment
from tests.helpers import TINY, make_config
from tests.wandb_records import read_records

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wandb_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("wb")
    cfg = make_config(*TINY, "logger=wandb", "logger.mode=offline", "eval.settings=[fp,w4a4]",
                      "strategy.profiles=[{name: npu8, share: 1.0, bits: [8]}]")
    results = run_experiment(cfg, out, group="sweep-x")
    return out, results


def test_results_files_are_consistent(wandb_run):
    out, results = wandb_run
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["final"] == results["final"]
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert len(rows) == 3 * 3  # rounds 0..2 x settings fp, w4a4, w8a8
    for r in on_disk["rounds"]:
        for setting, m in r["eval"].items():
            row = next(x for x in rows if int(x["round"]) == r["round"] and x["setting"] == setting)
            assert float(row["accuracy"]) == m["accuracy"] and float(row["loss"]) == m["loss"]
    for png in ("accuracy_vs_bits.png", "accuracy_vs_round.png", "partition.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (out / png).stat().st_size > 10_000


def test_offline_wandb_run_holds_metrics_and_config(wandb_run):
    out, results = wandb_run
    files = list((out / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1
    records = read_records(files[0])
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert run.run_group == "sweep-x" and run.job_type == "qafedavg"
    config = {item.key: json.loads(item.value_json) for r in records if r.WhichOneof("record_type") in ("run", "config")
              for item in (r.run.config.update if r.WhichOneof("record_type") == "run" else r.config.update)}
    assert config["num_clients"] == 6 and config["strategy"]["name"] == "qafedavg"
    history = [{i.nested_key[0] if i.nested_key else i.key: i.value_json for i in r.history.item}
               for r in records if r.WhichOneof("record_type") == "history"]
    keys = set().union(*history)
    for expected in ("eval/fp/accuracy", "eval/w4a4/loss", "eval/w8a8/accuracy", "train/loss",
                     "profile/npu8/w8a8/accuracy", "final/accuracy_matrix", "plots/accuracy_vs_bits"):
        assert any(k == expected or k.startswith(expected) for k in keys), expected
    assert any(k.startswith("train/bits_used/w8a8") for k in keys)
    nested = [{tuple(i.nested_key): json.loads(i.value_json) for i in r.history.item if len(i.nested_key) > 1}
              for r in records if r.WhichOneof("record_type") == "history"]
    hists = [h for h in nested if ("train/weight_bits_histogram", "_type") in h]
    assert len(hists) == 2  # rounds 1 and 2: all steps at 8 weight bits (the npu8 profile)
    for h in hists:
        assert h[("train/weight_bits_histogram", "_type")] == "histogram"
        assert h[("train/weight_bits_histogram", "bins")] == [7.5, 8.5]
        assert h[("train/weight_bits_histogram", "values")][0] > 0
    last_fp = [json.loads(h["eval/fp/accuracy"]) for h in history if "eval/fp/accuracy" in h][-1]
    assert last_fp == pytest.approx(results["final"]["fp"])


def test_report_on_a_real_multirun(tmp_path):
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
    assert lines[0] == "| method | seeds | fp | w4a4 |"
    table = lines[2:lines.index("")]
    labels = {frozenset(line.split(" | ")[0].lstrip("| ").split(", ")) for line in table}
    assert labels == {frozenset({"strategy=fedavg", "clients_per_round=3"}),
                      frozenset({"strategy=qafedavg", "clients_per_round=3"})}
    assert "Jobs without results" in report.stdout
    finals = {json.loads(p.read_text())["config"]["strategy"]["name"]: json.loads(p.read_text())["final"]
              for p in sweep.glob("*/results.json")}
    row = next(line for line in table if "strategy=fedavg" in line.split(" | ")[0])
    assert f"{100 * finals['fedavg']['w4a4']:.2f} ± 0.00" in row
    assert (sweep / "report.csv").is_file() and (sweep / "report.png").stat().st_size > 10_000
    assert (sweep / "report_rounds.png").stat().st_size > 10_000
    # the curves: rounds 0 and 1 evaluated, mean over the one seed = the job's own accuracies
    runs = {r["config"]["strategy"]["name"]: r for r in (json.loads(p.read_text()) for p in sweep.glob("*/results.json"))}
    rows = lines[lines.index("| method | 0 | 1 |") + 2:]
    row = next(row for row in rows if "strategy=fedavg" in row)
    cells = [f"{100 * e['eval']['fp']['accuracy']:.1f} / {100 * e['eval']['w4a4']['accuracy']:.1f}" for e in runs["fedavg"]["rounds"]]
    assert row.strip("| ").split(" | ")[1:] == cells
    assert "2 jobs; their wall times sum to" in report.stdout

    # the final models again from their checkpoints: the run's own options give the run's numbers
    same, mse = tmp_path / "same", tmp_path / "mse"
    for out, estimator in ((same, "minmax"), (mse, "mse")):
        proc = subprocess.run([sys.executable, "-m", "fedquant.reevaluate", str(sweep), "--out", str(out),
                               "--estimator", estimator], capture_output=True, text=True, cwd=ROOT, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
    for job in sweep.glob("*/results.json"):
        original = json.loads(job.read_text())
        assert json.loads((same / job.parent.name / "results.json").read_text())["final"] == original["final"]
        again = json.loads((mse / job.parent.name / "results.json").read_text())
        assert again["reevaluated"]["estimator"] == "mse" and again["final"]["fp"] == original["final"]["fp"]
    assert "| method | seeds | fp | w4a4 |" in subprocess.run(
        [sys.executable, "-m", "fedquant.report", str(mse)], capture_output=True, text=True, cwd=ROOT, timeout=120).stdout


def test_report_groups_continued_runs_by_method_not_by_checkpoint(tmp_path):
    from fedquant.analysis.report import collect

    jobs = {"a/6": ("seed=0", "+experiment=a", 0.5), "b/18": ("seed=1", "+experiment=a", 0.7),
            "b/7": ("seed=0", "+experiment=b", 0.9)}  # two sweep folders, reported together
    for name, (seed, experiment, acc) in jobs.items():
        (tmp_path / name / ".hydra").mkdir(parents=True)
        overrides = [seed, experiment, "num_rounds=80", f"resume_from=multirun/study/{name}"]
        (tmp_path / name / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
        (tmp_path / name / "results.json").write_text(json.dumps({"final": {"fp": acc}}))
    methods, missing = collect([tmp_path / "a", tmp_path / "b"])
    assert not missing
    assert {m: [r["final"]["fp"] for r in runs] for m, runs in methods.items()} == {"+experiment=a": [0.5, 0.7],
                                                                                   "+experiment=b": [0.9]}
    proc = subprocess.run([sys.executable, "-m", "fedquant.report", str(tmp_path / "a"), str(tmp_path / "b")],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip() == "error: several sweeps given: say where the combined report goes with --out DIR"


def test_wandb_run_is_finished_with_failure_when_the_run_fails(tmp_path):
    from strategies import DivergenceError

    cfg = make_config(*TINY, "num_rounds=4", "logger=wandb", "logger.mode=offline", "faults.nan_client_rate=0.2",
                      "eval.settings=[fp]")
    with pytest.raises(DivergenceError):
        run_experiment(cfg, tmp_path)
    records = read_records(next((tmp_path / "wandb").glob("offline-run-*/run-*.wandb")))
    exits = [r.exit for r in records if r.WhichOneof("record_type") == "exit"]
    assert len(exits) == 1 and exits[0].exit_code == 1


def test_report_without_results_is_one_line_and_exit_2(tmp_path, capsys):
    from fedquant.analysis.report import ReportError, main, make_report

    with pytest.raises(ReportError, match="no results.json under"):  # a library error, not an exit
        make_report([tmp_path])
    with pytest.raises(SystemExit) as stop:
        main([str(tmp_path)])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.startswith("error: no results.json under") and err.count("\n") == 1
