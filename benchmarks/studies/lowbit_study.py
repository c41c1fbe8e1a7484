"""The low-bit study (issue 18) and the equal-memory study (issue 21): every arm x seed as one
fedquant run, one at a time, resumable.

``python -m benchmarks.studies.lowbit_study --root multirun/lowbit --arms fedavg qafedavg --seeds 0 1 2``

Runs land in ``ROOT/<arm>/<seed>`` (``python -m fedquant.report ROOT/* --out ...`` reads them).
A job with a results.json is skipped; one with checkpoints but no results.json (interrupted)
continues with ``resume_from`` (exact, see the resume tests); otherwise it starts afresh. Jobs run
in the order seed-major (every arm's seed 0, then seed 1, ...) so that partial results already pair.
Each job is quiet; one line per job goes to stdout with its wall time.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

# the shared protocol: Fashion-MNIST CNN, 100 clients, 10 per round, Dirichlet(0.5) (the
# experiments' defaults), 80 rounds, evaluated and checkpointed every 5 (the last three kept)
COMMON = ("num_rounds=80", "eval.every=5", "checkpoint.every=5", "checkpoint.keep=3", "quiet=true")

def _profiles(weak: str) -> str:
    return f"strategy.profiles=[{{name: strong, share: 0.5, bits: [fp]}}, {{name: weak, share: 0.5, bits: {weak}}}]"


ARMS: dict[str, tuple[str, ...]] = {
    "fedavg": ("+experiment=fmnist_fedavg",),
    "fedavg_kure": ("+experiment=fmnist_fedavg_kure",),
    # the baseline with the schedule chosen for QAFedAvg (the same care for both sides)
    "fedavg_cosine": ("+experiment=fmnist_fedavg", "client.lr_schedule=cosine"),
    "qafedavg": ("+experiment=fmnist_qafedavg",),
    "qafedavg_per_round": ("+experiment=fmnist_qafedavg_per_round",),
    # the chosen variant with the server's EMA of the global weights evaluated (decay 0.9)
    "qafedavg_cosine_ema": ("+experiment=fmnist_qafedavg", "client.lr_schedule=cosine", "eval.average=ema"),
    "qafedavg_kure": ("+experiment=fmnist_qafedavg", "client.regularizer=kure", "client.reg_weight=1.0"),
    "qafedavg_cosine": ("+experiment=fmnist_qafedavg", "client.lr_schedule=cosine"),
    "qafedavg_distill": ("+experiment=fmnist_qafedavg", "client.distill_weight=1.0"),
    "qafedavg_dampen": ("+experiment=fmnist_qafedavg", "client.dampen_weight=0.02"),
    "qafedavg_freeze": ("+experiment=fmnist_qafedavg", "client.freeze_threshold=0.02"),
    "qafedavg_profiles": ("+experiment=fmnist_qafedavg_profiles",),
    # equal memory: half the clients hold the float model ("strong"); the other half ("weak") have
    # 1/16 of its bytes: HeteroFL's width-0.25 float sub-model, the full model at W2A2, or the
    # width-0.5 sub-model at W8A8 (first/last layers at 8 bits in the quantized arms; the QAT
    # arms' weak clients also take float steps, as every client does when fp is in B)
    "memory_heterofl_w025": ("+experiment=fmnist_fedavg", _profiles("[fp], width: 0.25")),
    "memory_qafedavg_w2a2": ("+experiment=fmnist_qafedavg", "strategy.bits=[fp,2]", _profiles("[2]")),
    "memory_mix_w05_w8a8": ("+experiment=fmnist_qafedavg", "strategy.bits=[fp,8]", _profiles("[8], width: 0.5")),
}


def job_command(arm: str, seed: int, job: Path) -> list[str]:
    command = [sys.executable, "-m", "fedquant", *ARMS[arm], *COMMON, f"seed={seed}", f"hydra.run.dir={job}"]
    if any(job.glob("checkpoint_r*.pt")):
        command.append(f"resume_from={job}")
    return command


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("multirun/lowbit"))
    parser.add_argument("--arms", nargs="+", choices=sorted(ARMS), required=True)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    args = parser.parse_args(argv)
    for seed in args.seeds:
        for arm in args.arms:
            job = (args.root / arm / str(seed)).resolve()
            if (job / "results.json").is_file():
                print(f"{arm} seed {seed}: done", flush=True)
                continue
            job.mkdir(parents=True, exist_ok=True)
            start = time.perf_counter()
            result = subprocess.run(job_command(arm, seed, job), capture_output=True, text=True)
            (job / "driver.log").write_text(result.stdout + result.stderr)
            status = "ok" if result.returncode == 0 else f"FAILED (exit {result.returncode}, see {job}/driver.log)"
            print(f"{arm} seed {seed}: {status} in {time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
