"""Training-time cost of in-place distillation: a client's local QAT (per-step bit-widths from
{2, 3, 4, 6, 8}) with and without the float teacher forward, in alternating blocks.

Both run fedquant's own client loop (``train_local``) on the same images; the CPU time of one
thread is measured and the median of the per-pair ratios printed (machine speed drifts cancel).

    python -m benchmarks.distill_cost            # Fashion-MNIST CNN, 640 images per block
    python -m benchmarks.distill_cost --tiny     # digits MLP (used by the tests)
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


def block_seconds(model, data, idx, weight: float, seed: int) -> float:
    t = time.thread_time()
    source = setting_source("per_step", parse_settings([2, 3, 4, 6, 8], "bits"), seed)
    train_local(model, data, idx, TrainConfig(batch_size=32, lr=0.01, distill_weight=weight), source, seed)
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
    base = quantize_model(build_model(arch, data), QuantConfig(None, None))
    plain, distilled = copy.deepcopy(base), copy.deepcopy(base)
    idx = torch.arange(args.images)
    block_seconds(plain, data, idx[:64], 0.0, 0), block_seconds(distilled, data, idx[:64], 1.0, 0)  # warm-up
    t_plain, t_dist = [], []
    for r in range(args.rounds):
        t_plain.append(block_seconds(plain, data, idx, 0.0, r))
        t_dist.append(block_seconds(distilled, data, idx, 1.0, r))
    ratio = statistics.median(b / a for a, b in zip(t_plain, t_dist, strict=True))
    print(f"{arch} on {name}, batch 32, per-step bits from {{2,3,4,6,8}}, 1 thread, {allocator}")
    print(f"QAT step {1e3 * statistics.median(t_plain):.2f} ms; with in-place distillation "
          f"{1e3 * statistics.median(t_dist):.2f} ms; ratio {ratio:.2f} (median of {args.rounds} pairs)")


if __name__ == "__main__":
    main()
