"""Are a run's numbers the same from process to process, and across CPU kernel paths?

``python -m benchmarks.studies.reproducibility --out docs/data/reproducibility.json``

Runs one small job (Fashion-MNIST CNN, a few rounds) several times, each a fresh process:

- twice as is: bit-identical results and checkpoints are expected (every draw is seeded);
- with the kernels of a machine without AVX-512 (``ATEN_CPU_CAPABILITY=avx2`` for torch's own,
  ``ONEDNN_MAX_CPU_ISA=AVX2`` for oneDNN's convolutions, ``MKL_ENABLE_INSTRUCTIONS=AVX2``):
  floating-point sums in another order;
- with two threads per client (``simulation.num_cpus_per_client=2``): intra-op parallel
  reductions split differently.

Prints, per variant, whether the final accuracies and every checkpoint's arrays equal the
first run's, and the largest accuracy difference; writes them with the environment to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from benchmarks.studies.figures import environment

JOB = ("dataset=fmnist", "num_clients=20", "clients_per_round=2", "num_rounds=3", "client.local_epochs=1",
       "eval.settings=[fp,w4a4,w2a2]", "quiet=true")
VARIANTS: dict[str, tuple[dict[str, str], tuple[str, ...]]] = {
    "first": ({}, ()),
    "again": ({}, ()),
    "avx2 kernels": ({"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}, ()),
    "2 threads per client": ({}, ("simulation.num_cpus_per_client=2",)),
}


def run(job_dir: Path, env: dict[str, str], overrides: tuple[str, ...]) -> dict:
    proc = subprocess.run([sys.executable, "-m", "fedquant", *JOB, *overrides, f"hydra.run.dir={job_dir}"],
                          env={**os.environ, **env}, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"error: the job failed ({proc.stderr.strip().splitlines()[-1:]})")
    return json.loads((job_dir / "results.json").read_text())


def same_checkpoints(a: Path, b: Path) -> bool:
    for path in sorted(a.glob("checkpoint_r*.pt")):
        x, y = (torch.load(p, weights_only=False)["arrays"] for p in (path, b / path.name))
        if x.keys() != y.keys() or not all(torch.equal(x[k], y[k]) for k in x):
            return False
    return True


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the comparison and the environment here (JSON)")
    args = parser.parse_args(argv)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        first = Path(tmp) / "first"
        for name, (env, overrides) in VARIANTS.items():
            job = first if name == "first" else Path(tmp) / name.replace(" ", "_")
            results = run(job, env, overrides)
            if name == "first":
                reference = results
            diff = max(abs(results["final"][s] - reference["final"][s]) for s in reference["final"])
            rows[name] = {"final": results["final"], "identical_final": results["final"] == reference["final"],
                          "identical_checkpoints": same_checkpoints(first, job), "max_accuracy_diff": diff}
            print(f"{name:28s} final {'identical' if rows[name]['identical_final'] else 'differs'}, "
                  f"checkpoints {'identical' if rows[name]['identical_checkpoints'] else 'differ'}, "
                  f"max |accuracy diff| {100 * diff:.2f} points", flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"job": JOB, "variants": rows, "environment": environment()}, indent=2) + "\n")


if __name__ == "__main__":
    main()
