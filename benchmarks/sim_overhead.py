"""fedquant's Flower+Ray simulation against a plain sequential PyTorch FedAvg loop, side by side.

Same workload for both: the same partitions, model, sampled clients, per-step bit-widths, local
steps (fedquant.training.train_local) and example-weighted averaging. The plain loop is the
physical limit of the local training in one process (all cores as intra-op threads); fedquant runs
it through Flower's simulation engine on Ray (``simulation.num_cpus_per_client`` per worker).
Prints steady-state seconds per round (median of rounds 2..R, no evaluation inside) and the time
from start to the end of round 1, for both, and their ratio.

    python -m benchmarks.sim_overhead                      # Fashion-MNIST CNN, 100 clients, 10/round
    python -m benchmarks.sim_overhead --rounds 3 --tiny    # digits MLP, seconds (used by the tests)
    python -m benchmarks.sim_overhead --gpus-per-client 0.25   # on a GPU machine
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import psutil
import torch

from benchmarks.common import allocator_option, apply_allocator_option, make_config, training_bound
from fedquant.app import experiment_specs, run_experiment, training_plan
from fedquant.bitwidths import parse_setting, setting_source
from fedquant.protocol import load_transport_state, transport_state
from fedquant.training import TrainConfig, train_local
from fedquant.workspace import (
    build_quantized_model,
    federated_data,
    select_device,
)


def plain_fedavg(cfg: dict) -> tuple[list[float], float]:
    """Sequential FedAvg in one process; returns (seconds per round, seconds to the end of round 1)."""
    start = time.perf_counter()
    spec, model_spec = experiment_specs(cfg)
    federated_data.cache_clear()
    fed = federated_data(spec)
    device = select_device(cfg["simulation"]["device"])
    model = build_quantized_model(model_spec, fed.data, seed=cfg["seed"]).to(device)
    plan = training_plan(cfg)
    c = cfg["client"]
    train_cfg = TrainConfig(c["local_epochs"], c["batch_size"], c["lr"], c["momentum"], c["weight_decay"])
    global_state = {k: v.clone() for k, v in transport_state(model).items()}
    times, first = [], None
    for r in range(1, cfg["num_rounds"] + 1):
        t = time.perf_counter()
        total, acc = 0, {k: torch.zeros_like(v) for k, v in global_state.items()}
        for client in plan.sample_clients(r):
            load_transport_state(model, global_state)
            sampling, settings = plan.assignment(r, client)
            seed = plan.client_seed(r, client)
            res = train_local(model, fed.data, fed.clients[client], train_cfg,
                              setting_source(sampling, [parse_setting(x) for x in settings], seed), seed, device)
            for k, v in transport_state(model).items():
                acc[k] += v * res.num_examples
            total += res.num_examples
        global_state = {k: v / total for k, v in acc.items()}
        now = time.perf_counter()
        times.append(now - t)
        first = first or now - start
    return times, first


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

    plain, plain_first = plain_fedavg(cfg)
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
    print(f"ratio fedquant/plain (steady state): {s_steady / p_steady:.2f}")


if __name__ == "__main__":
    main()
