import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import DIVERGING, REFERENCE_RUN

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _dead_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fedquant(*args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    environ = {**os.environ, **(env or {})}
    environ.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([sys.executable, "-m", "fedquant", *args], capture_output=True, text=True, cwd=ROOT,
                          env=environ, timeout=timeout)


# Command-line runs shared between tests (each costs a Ray start; run once per session, when first needed)

@pytest.fixture(scope="session")
def reference_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    """`python -m fedquant` with tests.helpers.REFERENCE_RUN, as (process, run folder): the command
    line's numbers that `flwr run` must give, in simulation and on the secured Deployment Engine
    (tests/test_flower_app.py). It runs with $RAY_ADDRESS at a dead port, which the default run
    must not join (tests/test_first_run.py)."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    stale = {"RAY_ADDRESS": f"127.0.0.1:{_dead_port()}"}  # joining it would hang: the timeout fails the run
    return _fedquant(*REFERENCE_RUN, f"hydra.run.dir={run_dir}", env=stale, timeout=240), run_dir


@pytest.fixture(scope="session")
def diverged_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    """`python -m fedquant` with tests.helpers.DIVERGING (every client replies NaN in some round,
    with an offline W&B run), as (process, run folder): the divergence guard's exit, message and
    checkpoints (tests/test_reliability.py) and the failed W&B run (tests/test_tracking.py)."""
    run_dir = tmp_path_factory.mktemp("diverged") / "run"
    return _fedquant(*DIVERGING, f"hydra.run.dir={run_dir}"), run_dir
