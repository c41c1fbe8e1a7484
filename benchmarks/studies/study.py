"""Run a study's arms x seeds, one fedquant run at a time, resumable.

``python -m benchmarks.studies.study pays --arms all_low_fedavg all_low_qafedavg --seeds 0 1 2``

A study is a folder of Hydra experiments, ``conf/experiment/<study>/<arm>.yaml``: each arm is
reproduced by ``python -m fedquant +experiment=<study>/<arm> seed=S`` alone (or ``-m ... seed=0,1,2``);
this driver only orders and resumes the runs. Runs land in ``ROOT/<arm>/<seed>`` (default
``multirun/<study>``), which ``python -m fedquant.report`` and ``fedquant.reevaluate`` read. A job
with a results.json is skipped; one with checkpoints but no results.json (interrupted) continues with
``resume_from`` (exact, see the resume tests); otherwise it starts afresh. Jobs run seed-major
(every arm's seed 0, then seed 1, ...) so that partial results already pair. One line per job
goes to stdout with its wall time; the run's own output goes to ``<job>/driver.log``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

EXPERIMENTS = Path(__file__).resolve().parents[2] / "conf" / "experiment"


def study_arms(study: str) -> list[str]:
    """The arms of a study: the experiment files in conf/experiment/<study>/."""
    return sorted(path.stem for path in (EXPERIMENTS / study).glob("*.yaml"))


def job_command(study: str, arm: str, seed: int, job: Path) -> list[str]:
    command = [sys.executable, "-m", "fedquant", f"+experiment={study}/{arm}", f"seed={seed}",
               f"hydra.run.dir={job}"]
    if any(job.glob("checkpoint_r*.pt")):
        command.append(f"resume_from={job}")
    return command


def run_study(study: str, arms: list[str], seeds: list[int], root: Path) -> None:
    for seed in seeds:
        for arm in arms:
            job = (root / arm / str(seed)).resolve()
            if (job / "results.json").is_file():
                print(f"{arm} seed {seed}: done", flush=True)
                continue
            job.mkdir(parents=True, exist_ok=True)
            start = time.perf_counter()
            result = subprocess.run(job_command(study, arm, seed, job), capture_output=True, text=True)
            (job / "driver.log").write_text(result.stdout + result.stderr)
            status = "ok" if result.returncode == 0 else f"FAILED (exit {result.returncode}, see {job}/driver.log)"
            print(f"{arm} seed {seed}: {status} in {time.perf_counter() - start:.0f} s", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", help="a folder of conf/experiment/ (e.g. lowbit, pays)")
    parser.add_argument("--arms", nargs="+", help="arms to run, in this order (default: every arm)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--root", type=Path, help="where the runs go (default multirun/<study>)")
    args = parser.parse_args(argv)
    known = study_arms(args.study)
    if not known:
        parser.error(f"no study {args.study!r}: expected experiments in {EXPERIMENTS / args.study}/")
    unknown = sorted(set(args.arms or []) - set(known))
    if unknown:
        parser.error(f"unknown arm(s) {', '.join(unknown)} of {args.study}; known: {', '.join(known)}")
    run_study(args.study, args.arms or known, args.seeds, args.root or Path("multirun") / args.study)


if __name__ == "__main__":
    main()
