"""The benchmarks run (tiny sizes) and print their ratios; timings themselves are not asserted."""

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
    out = bench("benchmarks.quant_overhead", "--dataset", "digits", "--model", "mlp", "--steps", "3", "--rounds", "1",
                "--batch-sizes", "32")
    assert len(re.findall(r"^\s+(channels_last|contiguous)\s+32\s+[\d.]+\s+[\d.]+\s+[\d.]+$", out, re.M)) == 2


def test_eval_cost_runs():
    assert re.search(r"ratio \d+\.\d\d", bench("benchmarks.eval_cost", "--tiny", "--repeats", "1"))


@pytest.mark.slow
def test_sim_overhead_runs():
    out = bench("benchmarks.sim_overhead", "--tiny", "--rounds", "2")
    assert re.search(r"ratio fedquant/plain \(steady state\): \d+\.\d\d", out)
    assert re.search(r"one local step: \d+\.\d ms wall, \d+\.\d ms CPU inside the workers; \d+\.\d ms wall, "
                     r"\d+\.\d ms CPU in this process with 1 thread", out)


@pytest.mark.slow
def test_scale_clients_runs():
    out = bench("benchmarks.scale_clients", "--tiny", "--sizes", "6", "12", "--rounds", "2")
    assert re.search(r"peak RSS growth 6 -> 12 partitions: [+-]\d+\.\d%", out)


def test_ptq_cost_runs():
    out = bench("benchmarks.ptq_cost", "--tiny", "--repeats", "1", "--iterations", "20", "--settings", "w4a4")
    assert re.search(r"^\s+w4a4\s+\d+\.\d\d\s+\d+\.\d\d\s+\d+\.\d$", out, re.M)


def test_client_options_cost_runs():
    out = bench("benchmarks.client_options_cost", "--tiny", "--rounds", "1", "--images", "64")
    for option in ("in-place distillation", r"oscillation dampening", r"oscillation counting \(freezing\)"):
        assert re.search(rf"with {option}: \d+\.\d\d ms; ratio \d+\.\d\d", out), out
