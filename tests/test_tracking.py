"""Local results, plots and W&B offline run files, from real small runs (the sweep report:
tests/test_report.py)."""

import csv
import json

import pytest

from fedquant.app import run_experiment
from tests.helpers import TINY, make_config
from tests.wandb_records import read_records


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


def test_wandb_run_is_finished_with_failure_when_the_run_fails(diverged_run):
    """The run of tests/conftest.py's diverged_run: every client NaN in round 3, the federation
    diverged (one NaN client is only that client's rejected reply); the command line stops with
    the DivergenceError's message (tests/test_reliability.py reads the rest)."""
    proc, run_dir = diverged_run
    assert proc.returncode == 1 and proc.stderr.startswith("error: round 3: non-finite values from every client")
    records = read_records(next((run_dir / "wandb").glob("offline-run-*/run-*.wandb")))
    exits = [r.exit for r in records if r.WhichOneof("record_type") == "exit"]
    assert len(exits) == 1 and exits[0].exit_code == 1


def test_the_console_states_the_protocol_in_one_readable_line():
    import torch

    from fedquant.learning.evaluation import EvalProtocol
    from fedquant.quant import QuantConfig, quantize_model
    from fedquant.tracking.console import protocol_line

    model = quantize_model(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2)),
                           QuantConfig(None, None, pin_first_last=True))
    line = protocol_line(EvalProtocol().describe(model, 256, 128))
    assert "BatchNorm: no BatchNorm in the model;" in line and "biases int32 on s_x s_w" in line
    assert line.startswith("protocol: first/last layers at 8 bits;") and "\n" not in line


def test_the_end_of_a_run_says_what_it_wrote_in_percent(tmp_path):
    from fedquant.tracking.console import summary_lines

    rounds = [{"round": 0, "eval": {"fp": {"accuracy": 0.1}}}, {"round": 1, "train": {}},
              {"round": 2, "eval": {"fp": {"accuracy": 0.94444}, "w4a4": {"accuracy": 0.9}}}]
    text = summary_lines(rounds, ["fp", "w4a4"], 12.34, str(tmp_path))
    first, second = text.splitlines()
    assert first == "final test accuracy (%, round 2): fp 94.44 w4a4 90.00"
    assert second.startswith(f"wall time 12.3 s; written to {tmp_path}: results.json")
    assert all(name in second for name in ("metrics.csv", "*.png", "checkpoint_r*.pt"))
