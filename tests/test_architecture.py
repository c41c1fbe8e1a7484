"""The layering rules (docs/architecture.md) hold, checked by import-linter, and the contracts bite."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fedquant.streams import Stream

ROOT = Path(__file__).resolve().parent.parent
LINT = Path(sys.executable).with_name("lint-imports")
PACKAGES = ("fedquant", "strategies", "clients", "benchmarks")


def lint(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT), "--no-cache"], cwd=root, capture_output=True, text=True,
                          env={"PYTHONPATH": str(root), "PATH": str(LINT.parent)}, timeout=120)


def test_import_contracts_are_kept():
    result = lint(ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(("module", "line", "contract"), [
    ("fedquant/quant/_probe.py", "import flwr\n", "never imports Flower, Ray, Hydra or W&B"),
    ("fedquant/report/_probe.py", "import ray\n", "never imports Flower, Ray, Hydra or W&B"),
    ("fedquant/fields.py", "import hydra\n", "never imports Flower, Ray, Hydra or W&B"),
    ("clients/_probe.py", "import strategies\n", "never import each other"),
    ("fedquant/learning/_probe.py", "import fedquant.experiment.history\n", "layers"),
    ("fedquant/flower_app.py", "import onnx\n", "Only fedquant.export (and the ONNX latency benchmark) imports"),
    ("benchmarks/timing/sim_overhead.py", "import onnxruntime\n", "Only fedquant.export (and the ONNX latency"),
    ("fedquant/export/encodings.py", "import onnx\n", "fedquant.export.encodings never imports onnx"),
    ("clients/app.py", "import fedquant.export.check\n", "never import onnx, even indirectly"),
    ("fedquant/experiment/_probe.py", "import benchmarks.common\n", "never imports benchmarks"),
    ("benchmarks/studies/_probe.py", "import benchmarks.timing.ptq_cost\n", "never import each other"),
    ("fedquant/report/_probe.py", "import optuna\n", "Only fedquant.tune imports the optional tune extra"),
    ("fedquant/__main__.py", "import optuna.samplers\n", "Only fedquant.tune imports the optional tune extra"),
    ("fedquant/tune/_probe.py", "import ray\n", "fedquant.tune never imports Flower, Ray or W&B"),
    ("fedquant/tune/trial.py", "import fedquant.app\n", "fedquant.tune never imports Flower, Ray or W&B"),
    ("fedquant/runtime/_probe.py", "import fedquant.tune.space\n", "layers"),
    ("fedquant/deploy/_probe.py", "import flwr.cli\n", "fedquant.deploy (credentials for a secured Deployment Engine) needs only"),
])
def test_a_broken_rule_fails_the_check(tmp_path, module, line, contract):
    """The same contracts on a copy of the tree with one forbidden import added (appended to an
    existing module, or as a new one)."""
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    probe = tmp_path / module
    probe.write_text((probe.read_text() if probe.exists() else "") + line)
    result = lint(tmp_path)
    assert result.returncode != 0
    broken = [block for block in result.stdout.split("\n\n") if "BROKEN" in block]
    assert broken and contract in " ".join(" ".join(broken).split()), result.stdout[-3000:]


def test_random_streams_are_named_once():
    """Every seeded draw names its stream through fedquant.streams (no integer tags elsewhere)."""
    assert len({int(s) for s in Stream}) == len(Stream)
    offenders = []
    for path in [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")]:
        if path.name == "streams.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "default_rng" \
                    and node.args and isinstance(node.args[0], ast.List):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders, f"seed lists built by hand (use fedquant.streams.stream_rng): {offenders}"


def test_stream_generators_are_the_documented_seed_lists():
    import numpy as np

    from fedquant.streams import stream_rng

    a = stream_rng(3, Stream.CLIENTS, 7, 2).integers(1 << 30, size=4)
    b = np.random.default_rng([3, 4, 7, 2]).integers(1 << 30, size=4)
    assert (a == b).all()
