"""fedquant as a Flower app: `flwr run .` runs the same experiment as `python -m fedquant`."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import stat
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import psutil
import pytest

from fedquant.deploy.certificates import write_credentials
from fedquant.flower_app import compose_config, hydra_overrides, superlink_pid
from tests.helpers import REFERENCE_OVERRIDES, make_config, strip_seconds

ROOT = Path(__file__).resolve().parent.parent
FLWR = Path(sys.executable).with_name("flwr")
OVERRIDES = " ".join(REFERENCE_OVERRIDES)  # with num_rounds=1 seed=1: tests/conftest.py's reference_run
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


def readme_recipes() -> dict[str, str]:
    """The README's two Deployment Engine recipes, by the connection each writes: `secure` (TLS and
    SuperNode authentication) and `loopback` (--insecure, local experiments)."""
    blocks = [b for b in re.findall(r"```bash\n(.+?)\n```", (ROOT / "README.md").read_text(), flags=re.S)
              if "flower-superlink" in b]
    recipes = {re.search(r"flwr run \. (\w+)", b).group(1): b for b in blocks}
    assert sorted(recipes) == ["loopback", "secure"] and len(blocks) == 2
    return recipes


def run_config_lines(block: str, tmp_path: Path) -> tuple[Path, Path]:
    """Run a recipe's lines that need no SuperLink (credentials, Flower's config) twice, with HOME
    and FLWR_HOME in tmp_path; returns (HOME, FLWR_HOME)."""
    lines = [line for line in block.splitlines()
             if not line.startswith(("flower-superlink", "flower-supernode", "flwr run", "flwr supernode", "echo",
                                     "kill"))]
    assert any("config.toml" in line for line in lines)
    home, flwr_home = tmp_path / "home", tmp_path / "flwr-home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "FLWR_HOME": str(flwr_home), "FLWR_DISABLE_UPDATE_CHECK": "1",
           "PATH": f"{FLWR.parent}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(ROOT)}
    for _ in range(2):
        proc = subprocess.run(["bash", "-euc", "\n".join(lines)], env=env, capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not (home / ".flwr").exists()
    return home, flwr_home


def test_readme_loopback_recipe_writes_the_config_where_flwr_reads_it(tmp_path, monkeypatch):
    """The insecure recipe's config lines, run twice, add the `loopback` connection to
    $FLWR_HOME/config.toml (not ~/.flwr) and keep Flower's own default connection and valid TOML;
    every Flower process in it says --insecure (local experiments only)."""
    block = readme_recipes()["loopback"]
    assert all("--insecure" in line for line in block.splitlines() if line.startswith("flower-"))
    _, flwr_home = run_config_lines(block, tmp_path)
    config = tomllib.loads((flwr_home / "config.toml").read_text())
    assert config["superlink"]["default"] == "local"  # a plain `flwr run .` still simulates locally
    assert config["superlink"]["loopback"] == {"address": "127.0.0.1:9091", "insecure": True}
    from flwr.cli.flower_config import read_superlink_connection
    monkeypatch.setenv("FLWR_HOME", str(flwr_home))
    loopback = read_superlink_connection("loopback")
    assert (loopback.address, loopback.insecure) == ("127.0.0.1:9091", True)


SUPERLINK_TLS_FLAGS = ("--ssl-ca-certfile", "--ssl-certfile", "--ssl-keyfile", "--enable-supernode-auth")
SUPERNODE_AUTH_FLAGS = ("--root-certificates", "--auth-supernode-private-key")


def test_readme_secured_recipe_makes_credentials_and_a_tls_connection(tmp_path, monkeypatch):
    """The secured recipe's credential and config lines, run twice, write the credentials once and a
    `secure` connection that trusts the local CA; its SuperLink and SuperNodes take the flags the
    secured loopback test below starts them with, and none says --insecure."""
    block = readme_recipes()["secure"]
    assert "--insecure" not in block
    [link] = [line for line in block.splitlines() if line.startswith("flower-superlink")]
    nodes = [line for line in block.splitlines() if line.startswith("flower-supernode")]
    assert all(flag in link for flag in SUPERLINK_TLS_FLAGS) and len(nodes) == 2
    assert all(flag in node for node in nodes for flag in SUPERNODE_AUTH_FLAGS)
    assert sum(line.startswith("flwr supernode register") for line in block.splitlines()) == 2
    home, flwr_home = run_config_lines(block, tmp_path)
    creds = home / "fedquant-federation"
    assert (creds / "supernode-1.pub").exists() and stat.S_IMODE((creds / "ca.key").stat().st_mode) == 0o600
    config = tomllib.loads((flwr_home / "config.toml").read_text())
    assert config["superlink"]["default"] == "local"
    assert config["superlink"]["secure"] == {"address": "127.0.0.1:9091", "root-certificates": str(creds / "ca.crt")}
    from flwr.cli.flower_config import read_superlink_connection
    monkeypatch.setenv("FLWR_HOME", str(flwr_home))
    secure = read_superlink_connection("secure")
    assert (secure.address, secure.insecure, secure.root_certificates) == ("127.0.0.1:9091", False,
                                                                           str(creds / "ca.crt"))


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
def test_flwr_run_gives_the_numbers_of_the_command_line(tmp_path, reference_run):
    """`flwr run .` (a local SuperLink simulating the federation) and `python -m fedquant` with the
    same overrides, rounds and seed (the command line's run: tests/conftest.py's reference_run)."""
    flwr_home, control, http = tmp_path / "flwr-home", free_port(), free_port()
    flwr_home.mkdir()
    env = {**os.environ, "FLWR_HOME": str(flwr_home), "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
           "FLWR_DISABLE_UPDATE_CHECK": "1", "FLWR_LOCAL_CONTROL_API_PORT": str(control),
           "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(http)}
    with superlinks_stopped(control):
        proc = subprocess.run([str(FLWR), "run", ".", "--stream", "--run-config",
                               f"num-server-rounds=1 seed=1 output-dir='{tmp_path / 'flwr'}' overrides='{OVERRIDES}'"],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        [link] = superlinks(control)  # the local SuperLink `flwr run` started, still running
        assert f"(pid {link.pid}; stop it with `kill {link.pid}`)" in proc.stdout
    assert "fedquant: run" in proc.stdout and str(tmp_path / "flwr") in proc.stdout
    assert RAY_GPU_NOTICE not in proc.stdout + proc.stderr
    [flwr_results] = (tmp_path / "flwr").glob("*/results.json")
    cli, cli_dir = reference_run
    assert cli.returncode == 0, cli.stderr[-3000:]
    assert RAY_GPU_NOTICE not in cli.stdout + cli.stderr
    a, b = (json.loads(p.read_text()) for p in (flwr_results, cli_dir / "results.json"))
    assert a["config"] == b["config"] and a["protocol"] == b["protocol"]
    assert a["final"] == b["final"] and a["final_validation"] == b["final_validation"]
    for ra, rb in zip(a["rounds"], b["rounds"], strict=True):
        assert ra.get("eval") == rb.get("eval") and strip_seconds(ra) == strip_seconds(rb)
    assert not superlinks(control)  # the SuperLink it caused to start is stopped


@contextlib.contextmanager
def flower_processes(env: dict, logs: Path):
    """start(name, argv) runs a Flower process in the repository with its output in logs/<name>.log
    (stderr=True: its stderr apart, in logs/<name>.err); on exit every process started is killed,
    with the SuperExec each one started (which can outlive its parent for a few seconds: found by
    its --parent-pid)."""
    started: list[subprocess.Popen] = []

    def start(name: str, argv: list, stderr: bool = False) -> subprocess.Popen:
        apart = (logs / f"{name}.err").open("wb") if stderr else contextlib.nullcontext(subprocess.STDOUT)
        with (logs / f"{name}.log").open("wb") as log, apart as err:
            started.append(subprocess.Popen([str(a) for a in argv], cwd=ROOT, env=env, stdout=log, stderr=err))
        return started[-1]

    try:
        yield start
    finally:
        parents, procs = {str(p.pid) for p in started}, []
        for p in started:
            with contextlib.suppress(psutil.NoSuchProcess):
                procs += psutil.Process(p.pid).children(recursive=True) if p.poll() is None else []
        for p in started:
            p.kill()
        for proc in psutil.process_iter(["cmdline"]):
            cmd = proc.info["cmdline"] or []
            if "--parent-pid" in cmd[:-1] and cmd[cmd.index("--parent-pid") + 1] in parents:
                procs.append(proc)
        for p in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        psutil.wait_procs(procs, timeout=15)
        for p in started:
            p.wait(timeout=15)


def wait_for_line(log: Path, text: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text(errors="replace"):
        assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
        assert time.monotonic() < deadline, f"no {text!r} within {timeout} s: " + log.read_text(errors="replace")[-3000:]
        time.sleep(0.5)


@pytest.mark.slow
def test_secured_deployment_engine_on_loopback_with_node_owned_partitions(tmp_path, reference_run):
    """The README's real-device recipe on 127.0.0.1: TLS with a local CA and SuperNode
    authentication (credentials from fedquant.deploy). Two registered SuperNodes, each holding its
    own data partition (--node-config), and `flwr run . secure` with data-placement=node: the same
    numbers as the command line, which deals the same two partitions out itself. In the same
    SuperLink session a SuperNode with an unregistered key, a plaintext SuperNode (--insecure) and a
    plaintext `flwr` connection are refused. (The --insecure recipe for local experiments runs
    the same Flower code without TLS; its config lines are checked by the README test above.) The
    run starts as soon as the SuperNodes do and goes on while the refused connections fail."""
    creds = write_credentials(tmp_path / "creds", nodes=3)  # supernode-2's key is never registered
    address = f"127.0.0.1:{free_port()}"
    home, logs = tmp_path / "flwr-home", tmp_path / "logs"
    home.mkdir()
    logs.mkdir()
    (home / "config.toml").write_text(f'[superlink]\ndefault = "secure"\n\n[superlink.secure]\naddress = "{address}"\n'
                                      f'root-certificates = "{creds.ca_cert}"\n\n[superlink.plaintext]\n'
                                      f'address = "{address}"\ninsecure = true\n')
    env = {**os.environ, "FLWR_HOME": str(home), "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
           "FLWR_DISABLE_UPDATE_CHECK": "1"}
    bin_dir = FLWR.parent

    def flwr(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(FLWR), *map(str, args)], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=400)

    def supernode(*flags, partition: int = 0) -> list:
        return [bin_dir / "flower-supernode", *flags, "--superlink", address, "--port", free_port(),
                "--node-config", f"partition-id={partition} num-partitions=2"]

    with flower_processes(env, logs) as start:
        link = start("superlink", [bin_dir / "flower-superlink", "--ssl-ca-certfile", creds.ca_cert, "--ssl-certfile",
                                   creds.superlink_cert, "--ssl-keyfile", creds.superlink_key,
                                   "--enable-supernode-auth", "--host", "127.0.0.1", "--port", address.split(":")[1]])
        wait_for_line(logs / "superlink.log", f"Uvicorn running on https://{address}", link)
        for node in creds.nodes[:2]:
            reg = flwr("supernode", "register", node.public_key, "secure")
            assert reg.returncode == 0 and "registered successfully" in reg.stdout, reg.stdout + reg.stderr
        for k in range(2):
            start(f"node{k}", supernode("--root-certificates", creds.ca_cert, "--auth-supernode-private-key",
                                        creds.nodes[k].private_key, partition=k))
        unregistered = start("unregistered", supernode("--root-certificates", creds.ca_cert,
                                                       "--auth-supernode-private-key", creds.nodes[2].private_key))
        plaintext = start("plaintext", supernode("--insecure", "--max-retries", "1"))
        ls = start("ls", [FLWR, "ls", "plaintext"], stderr=True)  # the Control API over plain HTTP
        run = start("run", [FLWR, "run", ".", "secure", "--stream", "--run-config",
                            f"num-server-rounds=1 seed=1 data-placement='node' output-dir='{tmp_path / 'out'}' "
                            f"overrides='{OVERRIDES}'"], stderr=True)
        ls.wait(timeout=400)
        ls_out = (logs / "ls.log").read_text(errors="replace") + (logs / "ls.err").read_text(errors="replace")
        assert ls.returncode != 0 and "Connection to the SuperLink is unavailable" in ls_out, ls_out[-3000:]
        for name, proc, reason in (("unregistered", unregistered, "[code: 2004] Failed to activate SuperNode."),
                                   ("plaintext", plaintext, "Failed to initialize the connection to the SuperLink.")):
            proc.wait(timeout=240)
            log = (logs / f"{name}.log").read_text(errors="replace")
            assert proc.returncode != 0 and reason in log and "SuperNode ID:" not in log, log[-3000:]
        assert "No SuperNode found with the given public key" in (logs / "superlink.log").read_text(errors="replace")
        run.wait(timeout=400)
        stdout, stderr = ((logs / f"run.{ext}").read_text(errors="replace") for ext in ("log", "err"))
        assert run.returncode == 0, stdout[-3000:] + stderr[-3000:]
        assert f"`kill {link.pid}`" in stdout  # the SuperLink this test started
    [deployed] = (tmp_path / "out").glob("*/results.json")
    cli, cli_dir = reference_run  # the same overrides, rounds and seed on the command line
    assert cli.returncode == 0, cli.stderr[-3000:]
    a, b = (json.loads(p.read_text()) for p in (deployed, cli_dir / "results.json"))
    assert a["final"] == b["final"] and [c["partition"] for c in a["rounds"][1]["train"]["clients"]] == [0, 1]
