"""Training-time cost of the client QAT options: in-place distillation, oscillation dampening and
oscillation counting (for weight freezing), each against plain QAT in alternating blocks.

Every variant runs fedquant's own client loop (``train_local``, per-step bit-widths from
{2, 3, 4, 6, 8}) on the same images; the CPU time of one thread is measured and, per option, the
median of the per-pair ratios to the plain block next to it printed (machine drifts cancel).

    python -m benchmarks.timing.client_options_cost            # Fashion-MNIST CNN, 640 images per block
    python -m benchmarks.timing.client_options_cost --tiny     # digits MLP (used by the tests)
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from benchmarks.common import allocator_option, apply_allocator_option
from fedquant.data import load_dataset
from fedquant.federation.bitwidths import parse_settings, setting_source
from fedquant.learning.local_training import TrainConfig, train_local
from fedquant.models import build_model
from fedquant.quant import QuantConfig, quantize_model

OPTIONS = {  # TrainConfig fields of each variant
    "in-place distillation": {"distill_weight": 1.0},
    "oscillation dampening": {"dampen_weight": 0.02},
    "oscillation counting (freezing)": {"track_bits": 2},
}


def block_seconds(model, data, idx, options: dict, seed: int) -> float:
    t = time.thread_time()
    source = setting_source("per_step", parse_settings([2, 3, 4, 6, 8], "bits"), seed)
    train_local(model, data, idx, TrainConfig(batch_size=32, lr=0.01, **options), source, seed)
    return (time.thread_time() - t) / -(-len(idx) // 32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--rounds", type=int, default=7, help="alternating blocks of each")
    parser.add_argument("--images", type=int, default=640, help="images per block (batch 32)")
    allocator_option(parser)
    args = parser.parse_args()
    allocator = apply_allocator_option(args)
    torch.set_num_threads(1)
    name, arch = ("digits", "mlp") if args.tiny else ("fmnist", "cnn")
    data = load_dataset(name)
    torch.manual_seed(0)
    base = quantize_model(build_model(arch, data), QuantConfig(None, None, pin_first_last=True))
    variants = {"plain QAT": {}, **OPTIONS}
    models = {k: copy.deepcopy(base) for k in variants}
    idx = torch.arange(args.images)
    for k, options in variants.items():  # warm-up
        block_seconds(models[k], data, idx[:64], options, 0)
    times: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(args.rounds):
        for k, options in variants.items():
            times[k].append(block_seconds(models[k], data, idx, options, r))
    print(f"{arch} on {name}, batch 32, per-step bits from {{2,3,4,6,8}}, first/last layers pinned, 1 thread, {allocator}")
    print(f"plain QAT step {1e3 * statistics.median(times['plain QAT']):.2f} ms")
    for k in OPTIONS:
        ratio = statistics.median(b / a for a, b in zip(times["plain QAT"], times[k], strict=True))
        print(f"with {k}: {1e3 * statistics.median(times[k]):.2f} ms; ratio {ratio:.2f} (median of {args.rounds} pairs)")


if __name__ == "__main__":
    main()
