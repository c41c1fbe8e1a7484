"""Peak memory and steady round time as the number of client partitions grows (10 per round).

Round time falls as partitions grow, because each sampled client then holds less data; the
"overhead" column (round time minus the clients' own training time on 2 workers) is what must
stay flat.

Each size runs as its own ``python -m fedquant`` process; the summed RSS of that process and all
its descendants (Ray's raylet, GCS and workers) is sampled every 0.2 s. Partitions are IID (the
default Dirichlet minimum partition size cannot hold 10,000 clients of Fashion-MNIST).

    python -m benchmarks.timing.scale_clients                       # 100, 1,000, 10,000 partitions
    python -m benchmarks.timing.scale_clients --tiny --sizes 10 40  # digits MLP (used by the tests)
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.common import TreeMemorySampler, training_bound

ROOT = Path(__file__).resolve().parent.parent


def run_size(num_clients: int, rounds: int, tiny: bool) -> tuple[float, float, float]:
    """(peak RSS in MiB, median steady seconds per round, median seconds per round not spent in
    local training: round time minus what the 2 workers needed, sum/2 or the slowest client)."""
    base = ["clients_per_round=3", "client.local_epochs=1"] if tiny else ["+experiment=fmnist_qafedavg"]
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "fedquant", *base, f"num_clients={num_clients}", "partition=iid",
               f"num_rounds={rounds}", "eval.initial=false", f"eval.every={rounds + 1}", "eval.settings=[fp]",
               "quiet=true", f"hydra.run.dir={out}"]
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        with TreeMemorySampler(proc.pid) as mem:
            _, err = proc.communicate()
        if proc.returncode:
            raise SystemExit(f"run with {num_clients} clients failed:\n{err[-2000:]}")
        res = json.loads((Path(out) / "results.json").read_text())
    rounds_s = res["timing"]["round_s"]
    busy = [training_bound(r["train"]["clients"], workers=2) for r in res["rounds"][1:]]
    overhead = [t - b for t, b in zip(rounds_s, busy, strict=True)]
    return mem.peak / 2**20, statistics.median(rounds_s[1:] or rounds_s), statistics.median(overhead[1:] or overhead)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args()
    print(f"{'partitions':>10} {'peak RSS MiB':>13} {'s/round':>8} {'overhead s/round':>17}")
    rows = []
    for n in args.sizes:
        peak, per_round, overhead = run_size(n, args.rounds, args.tiny)
        rows.append((n, peak, per_round, overhead))
        print(f"{n:>10} {peak:>13.0f} {per_round:>8.2f} {overhead:>17.2f}", flush=True)
    first, last = rows[0], rows[-1]
    print(f"peak RSS growth {first[0]} -> {last[0]} partitions: {100 * (last[1] / first[1] - 1):+.1f}%; "
          f"round time ratio {last[2] / first[2]:.2f} (less data per client); overhead "
          f"{first[3]:.2f} -> {last[3]:.2f} s/round")


if __name__ == "__main__":
    main()
