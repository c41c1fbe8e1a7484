"""fedquant as a Flower app: `flwr run .` runs the same experiment as `python -m fedquant`."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import psutil
import pytest

from fedquant.flower_app import compose_config, hydra_overrides, superlink_pid
from tests.helpers import make_config, strip_seconds

ROOT = Path(__file__).resolve().parent.parent
FLWR = Path(sys.executable).with_name("flwr")
OVERRIDES = "num_clients=6 clients_per_round=3 client.local_epochs=1 eval.settings=[fp,w4a4,w2a2] quiet=true"
RAY_GPU_NOTICE = "Tip: In future versions of Ray"  # ray.init's FutureWarning (RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_run_config_maps_onto_the_hydra_composition():
    run_config = {"experiment": "fmnist_qafedavg", "overrides": "strategy.sampling=per_round client.lr=0.01",
                  "num-server-rounds": 3, "seed": 2, "output-dir": ""}
    assert hydra_overrides(run_config) == ["+experiment=fmnist_qafedavg", "strategy.sampling=per_round",
                                           "client.lr=0.01", "num_rounds=3", "seed=2"]
    assert compose_config(run_config) == make_config(*hydra_overrides(run_config))
    assert compose_config({"num-server-rounds": 0, "seed": 0})["num_rounds"] == make_config()["num_rounds"]
    with pytest.raises(ValueError, match="run config keys \\['rounds'\\] are not fedquant's"):
        hydra_overrides({"rounds": 3})


def test_superlink_pid_is_the_flower_superlink_the_serverapp_runs_under():
    py = "/venv/bin/python3"
    table = {40: (30, f"{py} /venv/bin/flwr-simulation --runtime-api-address 127.0.0.1:9091"),
             30: (20, f"{py} /venv/bin/flower-superexec --insecure --parent-pid 20"),
             20: (10, f"{py} /venv/bin/flower-superlink --insecure --simulation --port 9091"),
             10: (1, "bash -c flower-superlink")}
    assert superlink_pid(40, table.get) == 20
    assert superlink_pid(30, table.get) == 20
    assert superlink_pid(10, table.get) is None  # a command that merely mentions it
    assert superlink_pid(40, {40: (30, "python -m fedquant"), 30: (1, "bash")}.get) is None
    assert superlink_pid(40, {}.get) is None  # the process table cannot be read
    assert superlink_pid() is None  # pytest runs under no SuperLink


def test_readme_loopback_recipe_writes_the_config_where_flwr_reads_it(tmp_path, monkeypatch):
    """The recipe's config lines, run twice, add the `loopback` connection to
    $FLWR_HOME/config.toml (not ~/.flwr) and keep Flower's own default connection and valid TOML."""
    [block] = [b for b in re.findall(r"```bash\n(.+?)\n```", (ROOT / "README.md").read_text(), flags=re.S)
               if "flower-superlink" in b]
    config_lines = [line for line in block.splitlines()
                    if not line.startswith(("flower-superlink", "flower-supernode", "flwr run", "echo", "kill"))]
    assert any("config.toml" in line for line in config_lines)
    home, flwr_home = tmp_path / "home", tmp_path / "flwr-home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "FLWR_HOME": str(flwr_home), "FLWR_DISABLE_UPDATE_CHECK": "1",
           "PATH": f"{FLWR.parent}{os.pathsep}{os.environ['PATH']}"}
    for _ in range(2):
        proc = subprocess.run(["bash", "-euc", "\n".join(config_lines)], env=env, capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    config = tomllib.loads((flwr_home / "config.toml").read_text())
    assert config["superlink"]["default"] == "local"  # a plain `flwr run .` still simulates locally
    assert config["superlink"]["loopback"] == {"address": "127.0.0.1:9091", "insecure": True}
    assert not (home / ".flwr").exists()
    from flwr.cli.flower_config import read_superlink_connection
    monkeypatch.setenv("FLWR_HOME", str(flwr_home))
    loopback = read_superlink_connection("loopback")
    assert (loopback.address, loopback.insecure) == ("127.0.0.1:9091", True)


@contextlib.contextmanager
def superlinks_stopped(control_port: int):
    """Stop the local SuperLink that `flwr run` starts (it outlives the run and has no stop
    command) and its SuperExec children, found by the control port this test gave it."""
    try:
        yield
    finally:
        procs = [p for proc in superlinks(control_port) for p in [*proc.children(recursive=True), proc]]
        for p in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        psutil.wait_procs(procs, timeout=15)


def superlinks(control_port: int) -> list[psutil.Process]:
    return [proc for proc in psutil.process_iter(["cmdline"])
            if "flower-superlink" in " ".join(proc.info["cmdline"] or [])
            and f":{control_port}" in " ".join(proc.info["cmdline"] or [])]


@pytest.mark.slow
def test_flwr_run_gives_the_numbers_of_the_command_line(tmp_path):
    flwr_home, control, http = tmp_path / "flwr-home", free_port(), free_port()
    flwr_home.mkdir()
    env = {**os.environ, "FLWR_HOME": str(flwr_home), "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
           "FLWR_DISABLE_UPDATE_CHECK": "1", "FLWR_LOCAL_CONTROL_API_PORT": str(control),
           "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(http)}
    with superlinks_stopped(control):
        proc = subprocess.run([str(FLWR), "run", ".", "--stream", "--run-config",
                               f"num-server-rounds=2 seed=1 output-dir='{tmp_path / 'flwr'}' overrides='{OVERRIDES}'"],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        [link] = superlinks(control)  # the local SuperLink `flwr run` started, still running
        assert f"(pid {link.pid}; stop it with `kill {link.pid}`)" in proc.stdout
    assert "fedquant: run" in proc.stdout and str(tmp_path / "flwr") in proc.stdout
    assert RAY_GPU_NOTICE not in proc.stdout + proc.stderr
    [flwr_results] = (tmp_path / "flwr").glob("*/results.json")
    cli = subprocess.run([sys.executable, "-m", "fedquant", *OVERRIDES.split(), "num_rounds=2", "seed=1",
                          f"hydra.run.dir={tmp_path / 'cli'}"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert cli.returncode == 0, cli.stderr[-3000:]
    assert RAY_GPU_NOTICE not in cli.stdout + cli.stderr
    a, b = (json.loads(p.read_text()) for p in (flwr_results, tmp_path / "cli" / "results.json"))
    assert a["config"] == b["config"] and a["protocol"] == b["protocol"]
    assert a["final"] == b["final"] and a["final_validation"] == b["final_validation"]
    for ra, rb in zip(a["rounds"], b["rounds"], strict=True):
        assert ra.get("eval") == rb.get("eval") and strip_seconds(ra) == strip_seconds(rb)
    assert not superlinks(control)  # the SuperLink it caused to start is stopped


@pytest.mark.slow
def test_deployment_engine_on_loopback_with_node_owned_partitions(tmp_path):
    """A SuperLink and two SuperNodes on 127.0.0.1, each holding its own data partition
    (--node-config), and `flwr run . loopback` with data-placement=node: the same numbers as the
    command line, which deals the same two partitions out itself."""
    port = free_port()
    home = tmp_path / "flwr-home"
    home.mkdir()
    (home / "config.toml").write_text(f'[superlink]\ndefault = "loopback"\n\n[superlink.loopback]\n'
                                      f'address = "127.0.0.1:{port}"\ninsecure = true\n')
    env = {**os.environ, "FLWR_HOME": str(home), "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
           "FLWR_DISABLE_UPDATE_CHECK": "1"}
    bin_dir = FLWR.parent
    started = [subprocess.Popen([str(bin_dir / "flower-superlink"), "--insecure", "--host", "127.0.0.1", "--port",
                                 str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        for k in range(2):
            started.append(subprocess.Popen(
                [str(bin_dir / "flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{port}", "--port",
                 str(free_port()), "--node-config", f"partition-id={k} num-partitions=2"],
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        overrides = "num_clients=2 clients_per_round=2 quiet=true"
        proc = subprocess.run([str(FLWR), "run", ".", "loopback", "--stream", "--run-config",
                               f"num-server-rounds=1 data-placement='node' output-dir='{tmp_path / 'out'}' "
                               f"overrides='{overrides}'"], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=400)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert f"`kill {started[0].pid}`" in proc.stdout  # the SuperLink this test started
    finally:
        procs = [c for p in started if p.poll() is None for c in psutil.Process(p.pid).children(recursive=True)]
        for p in started:
            p.kill()
        for p in procs:  # each SuperNode's flower-superexec can outlive its parent for a few seconds
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        psutil.wait_procs([psutil.Process(p.pid) for p in started if p.poll() is None] + procs, timeout=15)
    [deployed] = (tmp_path / "out").glob("*/results.json")
    cli = subprocess.run([sys.executable, "-m", "fedquant", *overrides.split(), "num_rounds=1",
                          f"hydra.run.dir={tmp_path / 'cli'}"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert cli.returncode == 0, cli.stderr[-3000:]
    a, b = (json.loads(p.read_text()) for p in (deployed, tmp_path / "cli" / "results.json"))
    assert a["final"] == b["final"] and [c["partition"] for c in a["rounds"][1]["train"]["clients"]] == [0, 1]
