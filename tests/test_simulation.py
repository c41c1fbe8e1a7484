"""End to end through Flower's simulation engine and Ray, and the command line."""

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from flwr.superlink.grid import InMemoryGrid

from fedquant.app import run_experiment
from fedquant.runtime import simulation
from fedquant.runtime.simulation import REPLY_POLL_S, poll_replies_often
from tests.fixtures import cifar_files
from tests.helpers import TINY, make_config, strip_seconds
from tests.inprocess import run_experiment_inprocess

PROFILES = "strategy.profiles=[{name: npu8, share: 0.5, bits: [8]}, {name: mcu, share: 0.5, bits: [2, 4]}]"
SETTINGS = "eval.settings=[fp,w8a8,w4a4,w4a8]"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def e2e(tmp_path_factory):
    cfg = make_config(*TINY, PROFILES, SETTINGS)
    out = tmp_path_factory.mktemp("run")
    run_experiment(cfg, out)
    return cfg, json.loads((out / "results.json").read_text())


def test_results_json_has_every_setting_and_profile(e2e):
    cfg, res = e2e
    expected = ["fp", "w8a8", "w4a4", "w4a8", "w2a2"]  # w2a2: the mcu profile's deployment setting
    assert list(res["final"]) == expected and list(res["model_bytes"]) == expected
    assert [r["round"] for r in res["rounds"]] == [0, 1, 2]
    for r in res["rounds"]:
        assert list(r["eval"]) == expected
        assert all(0.0 <= v["accuracy"] <= 1.0 and v["loss"] > 0 for v in r["eval"].values())
    assert res["final"] == {k: v["accuracy"] for k, v in res["rounds"][-1]["eval"].items()}
    assert res["per_profile"] == {"npu8": {"w8a8": res["final"]["w8a8"]},
                                  "mcu": {"w2a2": res["final"]["w2a2"], "w4a4": res["final"]["w4a4"]}}
    assert res["model_bytes"]["w4a4"] < res["model_bytes"]["w8a8"] < res["model_bytes"]["fp"]
    assert res["config"]["num_clients"] == 6 and res["wall_time_s"] > 0


def test_every_client_trained_at_its_profiles_bits(e2e):
    _, res = e2e
    allowed = {"npu8": {"w8a8"}, "mcu": {"w2a2", "w4a4"}}
    seen = set()
    for r in res["rounds"][1:]:
        assert len(r["train"]["clients"]) == 3 and r["train"]["failures"] == 0
        for c in r["train"]["clients"]:
            assert c["bits_used"] and set(c["bits_used"]) <= allowed[c["profile"]]
            seen |= set(c["bits_used"])
        assert sum(r["train"]["bits_used"].values()) == sum(sum(c["bits_used"].values()) for c in r["train"]["clients"])
    assert seen == {"w8a8", "w2a2", "w4a4"}


def test_same_seed_twice_gives_identical_results(e2e, tmp_path):
    cfg, first = e2e
    run_experiment(cfg, tmp_path)
    second = json.loads((tmp_path / "results.json").read_text())
    assert second["final"] == first["final"]
    for a, b in zip(first["rounds"], second["rounds"], strict=True):
        assert a.get("eval") == b.get("eval")
        assert strip_seconds(a) == strip_seconds(b)


def cli(*args, timeout=300):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([sys.executable, "-m", "fedquant", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=env)


def test_cli_bad_config_is_one_line_exit_2(tmp_path):
    proc = cli("clients_per_round=20", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: clients_per_round=20 is not valid: allowed is an integer in 1..10 (at most num_clients)"
    assert "Traceback" not in proc.stdout + proc.stderr


def test_cli_cifar_missing_offline_is_one_line(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = cli("+experiment=cifar_qafedavg", f"dataset.root={empty}", f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cifar10: neither") and "dataset.root=" in lines[0]


CLI_CIFAR = "cifar_heterofl"  # width sub-models in the replies: the one run through the command line and Ray


def test_every_shipped_cifar_experiment_starts_on_real_format_files(tmp_path):
    """Each conf/experiment/cifar*.yaml runs one round on miniature CIFAR-10/100 binary releases
    (augmentation and the round schedule included): CLI_CIFAR on the command line, the others
    meanwhile in process (tests/inprocess.py: the same Experiment and client handler, without a Ray
    start each)."""
    root = tmp_path / "cifar"
    for name, folder, n in (("cifar10", "cifar-10-batches-bin", 24), ("cifar100", "cifar-100-binary", 120)):
        (root / folder).mkdir(parents=True)
        for member, raw in cifar_files(name, n=n)[0].items():
            (root / folder / member).write_bytes(raw)
    experiments = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("cifar*.yaml"))
    overrides = (f"dataset.root={root}", "dataset.holdout=40", "dataset.validation=8", "num_clients=4",
                 "clients_per_round=2", "num_rounds=1", "partition=iid", "eval.settings=[fp,w4a4]", "quiet=true")
    assert CLI_CIFAR in experiments
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop("HYDRA_FULL_ERROR", None)
    with (tmp_path / "cli.err").open("w") as err:
        cli_run = subprocess.Popen([sys.executable, "-m", "fedquant", f"+experiment={CLI_CIFAR}", *overrides,
                                    f"hydra.run.dir={tmp_path / 'cli' / CLI_CIFAR}"], stdout=subprocess.DEVNULL,
                                   stderr=err, text=True, cwd=ROOT, env=env)
    try:
        for name in experiments:
            if name != CLI_CIFAR:
                run_experiment_inprocess(make_config(f"+experiment={name}", *overrides), tmp_path / "inprocess" / name)
        cli_run.wait(timeout=600)
    finally:
        cli_run.kill()
        cli_run.wait()
    stderr = (tmp_path / "cli.err").read_text()
    assert cli_run.returncode == 0 and "error" not in stderr, stderr[-3000:]
    results = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("*/*/results.json"))]
    assert len(results) == len(experiments) >= 3 and (tmp_path / "cli" / CLI_CIFAR / "results.json").is_file()
    for res in results:
        widths = {"fp@0.5", "fp@0.25"} if res["config"]["strategy"]["profiles"] else set()  # cifar_heterofl
        assert set(res["final"]) == {"fp", "w4a4"} | widths and res["config"]["dataset"]["augment"] is True
        assert res["partition"] == {"sizes": [20, 20, 20, 20], "calibration": 32, "validation": 8}


def test_flowers_simulation_grid_polls_replies_every_5_ms():
    grid = InMemoryGrid(state_factory=SimpleNamespace(state=lambda: None))  # as run_simulation builds it
    assert grid.pull_interval == 0.1  # Flower's default, which poll_replies_often exists to change
    poll_replies_often(grid)
    assert grid.pull_interval == REPLY_POLL_S == 0.005


def test_a_grid_without_pull_interval_warns_once_and_keeps_flowers_default(monkeypatch, caplog):
    class RenamedGrid(InMemoryGrid):  # a Flower whose grid calls the interval something else
        def __init__(self, state_factory):
            super().__init__(state_factory)
            self._poll_every = self.pull_interval
            del self.pull_interval

    monkeypatch.setattr(simulation, "_warned", set())
    grid = RenamedGrid(SimpleNamespace(state=lambda: None))
    with caplog.at_level(logging.WARNING, logger="fedquant"):
        poll_replies_often(grid)
        poll_replies_often(grid)
    warnings = [r.getMessage() for r in caplog.records if r.name == "fedquant"]
    assert len(warnings) == 1 and "RenamedGrid has no attribute 'pull_interval'" in warnings[0]
    assert "installed flwr" in warnings[0] and "\n" not in warnings[0]
    assert not hasattr(grid, "pull_interval") and grid._poll_every == 0.1  # nothing set that Flower would not read


def test_other_grids_are_left_alone(caplog):
    grid = SimpleNamespace(pull_interval=3.0)  # e.g. a deployment grid, or the tests' in-process one
    with caplog.at_level(logging.WARNING, logger="fedquant"):
        poll_replies_often(grid)
    assert grid.pull_interval == 3.0 and not caplog.records
