"""fedquant's Flower+Ray simulation against a plain sequential PyTorch FedAvg loop, side by side.

Same workload for both: the same partitions, model, sampled clients, per-step bit-widths, local
steps (fedquant.learning.local_training.train_local) and example-weighted averaging. The plain loop is the
physical limit of the local training in one process (all cores as intra-op threads); fedquant runs
it through Flower's simulation engine on Ray (``simulation.num_cpus_per_client`` per worker).
Prints steady-state seconds per round (median of rounds 2..R, no evaluation inside) and the time
from start to the end of round 1, for both, and their ratio; and the cost of one local step
(wall and CPU time) inside fedquant's workers against the same round's clients trained in this
process with one thread.

    python -m benchmarks.timing.sim_overhead                      # Fashion-MNIST CNN, 100 clients, 10/round
    python -m benchmarks.timing.sim_overhead --rounds 3 --tiny    # digits MLP, seconds (used by the tests)
    python -m benchmarks.timing.sim_overhead --gpus-per-client 0.25   # on a GPU machine
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import psutil
import torch

from benchmarks.common import allocator_option, apply_allocator_option, make_config, training_bound
from fedquant.app import run_experiment
from fedquant.experiment.specs import experiment_specs, training_plan
from fedquant.experiment.workspace import (
    build_quantized_model,
    federated_data,
    select_device,
)
from fedquant.federation.bitwidths import parse_setting, setting_source
from fedquant.learning.local_training import TrainConfig, train_local
from fedquant.models.state import float_state, load_float_state


class PlainFedAvg:
    """Sequential FedAvg in one process, on the same plan (clients, seeds, bit-widths) as fedquant."""

    def __init__(self, cfg: dict) -> None:
        spec, model_spec = experiment_specs(cfg)
        federated_data.cache_clear()
        self.fed = federated_data(spec)
        self.device = select_device(cfg["simulation"]["device"])
        self.model = build_quantized_model(model_spec, self.fed.data, seed=cfg["seed"]).to(self.device)
        self.plan = training_plan(cfg)
        c = cfg["client"]
        self.train_cfg = TrainConfig(c["local_epochs"], c["batch_size"], c["lr"], c["momentum"], c["weight_decay"])
        self.global_state = {k: v.clone() for k, v in float_state(self.model).items()}

    def train_client(self, r: int, client: int):
        load_float_state(self.model, self.global_state)
        sampling, settings = self.plan.assignment(r, client)
        seed = self.plan.client_seed(r, client)
        return train_local(self.model, self.fed.data, self.fed.clients[client], self.train_cfg,
                           setting_source(sampling, [parse_setting(x) for x in settings], seed), seed, self.device)

    def run_round(self, r: int) -> None:
        total, acc = 0, {k: torch.zeros_like(v) for k, v in self.global_state.items()}
        for client in self.plan.sample_clients(r):
            res = self.train_client(r, client)
            for k, v in float_state(self.model).items():
                acc[k] += v * res.num_examples
            total += res.num_examples
        self.global_state = {k: v / total for k, v in acc.items()}

    def step_cost(self, r: int, threads: int = 1) -> tuple[float, float]:
        """(wall, CPU) seconds per local step over round ``r``'s clients, with ``threads`` threads."""
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        wall, cpu, steps = time.perf_counter(), time.thread_time(), 0
        for client in self.plan.sample_clients(r):
            steps += self.train_client(r, client).steps
        wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
        torch.set_num_threads(before)
        return wall / steps, cpu / steps


def plain_fedavg(cfg: dict) -> tuple[list[float], float, tuple[float, float]]:
    """(seconds per round, seconds to the end of round 1, 1-thread (wall, CPU) s per step)."""
    start = time.perf_counter()
    plain = PlainFedAvg(cfg)
    times, first = [], None
    for r in range(1, cfg["num_rounds"] + 1):
        t = time.perf_counter()
        plain.run_round(r)
        now = time.perf_counter()
        times.append(now - t)
        first = first or now - start
    return times, first, plain.step_cost(min(2, cfg["num_rounds"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--tiny", action="store_true", help="digits MLP, 6 clients, 3 per round")
    parser.add_argument("--gpus-per-client", type=float, default=0.0)
    parser.add_argument("--cpus-per-client", type=float, default=1.0)
    allocator_option(parser)
    args = parser.parse_args()
    if args.tiny:
        overrides = ["num_clients=6", "clients_per_round=3", "client.local_epochs=1"]
    else:
        overrides = ["+experiment=fmnist_qafedavg", "partition=dirichlet"]
    overrides += [f"num_rounds={args.rounds}", "strategy.sampling=per_step", "eval.initial=false",
                  f"eval.every={args.rounds + 1}", "eval.settings=[fp]", "quiet=true",
                  f"simulation.num_gpus_per_client={args.gpus_per_client}",
                  f"simulation.num_cpus_per_client={args.cpus_per_client}",
                  f"simulation.retain_freed_memory={not args.default_malloc}"]
    cfg = make_config(*overrides)
    allocator = apply_allocator_option(args)  # for the plain loop too, in this process
    print(f"workload: {cfg['dataset']['name']} {cfg['model']['name']}, {cfg['num_clients']} clients, "
          f"{cfg['clients_per_round']} per round, {cfg['client']['local_epochs']} local epoch(s), "
          f"bits per step from {cfg['strategy']['bits']}, {args.rounds} rounds, device {select_device('auto')}, "
          f"{allocator} (both)")

    plain, plain_first, (step_wall, step_cpu) = plain_fedavg(cfg)
    with tempfile.TemporaryDirectory() as out:
        federated_data.cache_clear()
        results = run_experiment(cfg, out)
    sim = results["timing"]["round_s"]
    p_steady, s_steady = statistics.median(plain[1:]), statistics.median(sim[1:])
    print(f"plain PyTorch loop (1 process, {torch.get_num_threads()} threads): "
          f"{p_steady:.2f} s/round steady, round 1 ends at {plain_first:.1f} s")
    print(f"fedquant (Flower + Ray, {cfg['simulation']['num_cpus_per_client']} CPU per worker): "
          f"{s_steady:.2f} s/round steady, round 1 ends at {results['timing']['to_round1_end_s']:.1f} s")
    trained = [r["train"]["clients"] for r in results["rounds"][2:] if "train" in r]
    workers = max(1, int(psutil.cpu_count() // cfg["simulation"]["num_cpus_per_client"]))
    busy = statistics.median(sum(c["seconds"] for c in cs) for cs in trained)
    bound = statistics.median(training_bound(cs, workers) for cs in trained)
    print(f"  inside fedquant's clients: {busy:.2f} s of local training per round; {workers} workers "
          f"could finish it in {bound:.2f} s")
    clients = [c for cs in trained for c in cs]
    steps = sum(sum(c["bits_used"].values()) for c in clients)
    print(f"  one local step: {1e3 * sum(c['seconds'] for c in clients) / steps:.1f} ms wall, "
          f"{1e3 * sum(c['cpu_seconds'] for c in clients) / steps:.1f} ms CPU inside the workers; "
          f"{1e3 * step_wall:.1f} ms wall, {1e3 * step_cpu:.1f} ms CPU in this process with 1 thread")
    print(f"ratio fedquant/plain (steady state): {s_steady / p_steady:.2f}")


if __name__ == "__main__":
    main()
