"""QAT step time vs float step time for the Fashion-MNIST CNN, measured side by side.

Float and W4A4 QAT steps are timed in alternating blocks in one process (one thread), so machine
noise hits both equally. Times are the thread's CPU time (with one thread that is the step's
work; time the virtual machine takes the core away is left out). Printed per batch size and
memory layout (channels_last is what training uses for conv models; contiguous is PyTorch's
default): median ms per step of each, and the median of the per-pair ratios.

    python -m benchmarks.timing.quant_overhead [--steps 20] [--rounds 15] [--batch-sizes 32 128]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F

from benchmarks.common import allocator_option, apply_allocator_option
from fedquant.data import load_dataset
from fedquant.learning.batches import to_input
from fedquant.models import build_model
from fedquant.quant import QuantConfig, quantize_model


def step_times(model, data, batch_size: int, steps: int, blocks: int, fmt=torch.channels_last) -> list[float]:
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    per_block = []
    for _ in range(blocks):
        idx = torch.randint(len(data.train_y), (steps, batch_size), generator=gen)
        t = time.thread_time()
        for b in idx:
            loss = F.cross_entropy(model(to_input(data, data.train_x[b], "cpu", fmt)), data.train_y[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        per_block.append((time.thread_time() - t) / steps)
    return per_block


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fmnist")
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--steps", type=int, default=20, help="steps per timed block")
    parser.add_argument("--rounds", type=int, default=15, help="alternating float/QAT blocks")
    allocator_option(parser)
    args = parser.parse_args()
    allocator = apply_allocator_option(args)
    torch.set_num_threads(1)
    data = load_dataset(args.dataset)
    print(f"{args.model} on {args.dataset}, 1 thread, torch {torch.__version__}, {allocator}")
    print(f"{'layout':>14} {'batch':>6} {'float ms/step':>14} {'W4A4 QAT ms/step':>17} {'QAT/float':>10}")
    layouts = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}
    for name, fmt in layouts.items():
        for bs in args.batch_sizes:
            torch.manual_seed(0)
            float_model = build_model(args.model, data)
            fp = quantize_model(copy.deepcopy(float_model), QuantConfig(None, None)).to(memory_format=fmt)
            qat = quantize_model(copy.deepcopy(float_model), QuantConfig(4, 4)).to(memory_format=fmt)
            step_times(fp, data, bs, 5, 1, fmt), step_times(qat, data, bs, 5, 1, fmt)  # warm-up
            t_fp, t_q = [], []
            for _ in range(args.rounds):
                t_fp += step_times(fp, data, bs, args.steps, 1, fmt)
                t_q += step_times(qat, data, bs, args.steps, 1, fmt)
            f, q = statistics.median(t_fp), statistics.median(t_q)
            ratio = statistics.median(b / a for a, b in zip(t_fp, t_q, strict=True))
            print(f"{name:>14} {bs:>6} {f * 1e3:>14.2f} {q * 1e3:>17.2f} {ratio:>10.3f}")


if __name__ == "__main__":
    main()
