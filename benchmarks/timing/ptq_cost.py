"""Cost of the strong post-training baseline: AdaRound at each iteration count against basic PTQ
(round to nearest), per evaluated setting, beside one float test evaluation (same model, same
calibration images), and the validation accuracy each buys.

Each setting is deployed (ranges, AdaRound, calibration) in turn with ``ptq=basic`` and
``ptq=adaround`` at every ``--iterations`` count, in adjacent groups; the median seconds and the
median of the per-group ratios are printed, so drifts in machine speed cancel. Layers pinned at 8
bits (first and last) and settings at 8 bits keep round-to-nearest, so they cost AdaRound nothing.
The cost of the post-training baseline per model is the sum over the evaluated settings.

    python -m benchmarks.timing.ptq_cost --iterations 500 2000 5000   # Fashion-MNIST CNN, 1,024 calibration images
    python -m benchmarks.timing.ptq_cost --tiny          # digits MLP (used by the tests)
    python -m benchmarks.timing.ptq_cost --init-from multirun/<sweep>/<job>   # a trained model
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from benchmarks.common import allocator_option, apply_allocator_option, make_config
from fedquant.experiment.config import with_overrides
from fedquant.experiment.resume import load_init
from fedquant.experiment.specs import experiment_specs, server_evaluator
from fedquant.experiment.workspace import build_quantized_model, federated_data
from fedquant.federation.bitwidths import parse_settings, setting_name
from fedquant.learning.evaluation import accuracy
from fedquant.models.state import float_state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--iterations", type=int, nargs="+", default=[500], help="AdaRound iterations per layer")
    parser.add_argument("--init-from", default=None, help="a run directory or checkpoint: time its final model "
                                                          "(default: the seeded initial model)")
    parser.add_argument("--settings", nargs="+", default=["w6a6", "w4a4", "w3a3", "w2a2"])
    parser.add_argument("--threads", type=int, default=1)
    allocator_option(parser)
    args = parser.parse_args()
    allocator = apply_allocator_option(args)
    torch.set_num_threads(args.threads)
    cfg = make_config("dataset=digits" if args.tiny else "dataset=fmnist",
                      *([f"init_from={args.init_from}"] if args.init_from else []))
    data_spec, model_spec = experiment_specs(cfg)
    fed = federated_data(data_spec)
    state = float_state(build_quantized_model(model_spec, fed.data))
    if args.init_from:
        state, _ = load_init(cfg, state)
    settings = parse_settings(args.settings, "--settings")
    basic = server_evaluator(with_overrides(cfg, {"eval.weight_range": "mse"}), fed, settings)
    ada = {n: server_evaluator(with_overrides(cfg, {"eval.weight_range": "mse", "eval.ptq": "adaround",
                                                    "eval.adaround_iterations": n}), fed, settings)
           for n in args.iterations}
    t = time.perf_counter()
    accuracy(basic.deploy(state, (None, None)), fed.data, fed.data.test_x, fed.data.test_y)
    float_eval = time.perf_counter() - t
    print(f"{cfg['dataset']['name']} {cfg['model']['name']}: {len(fed.calibration)} calibration images, "
          f"{args.threads} thread(s), {allocator}; AdaRound iterations per layer: {args.iterations}")
    print(f"one float test evaluation (incl. BatchNorm re-estimation): {float_eval:.2f} s")
    val_x, val_y = fed.data.train_x[fed.validation], fed.data.train_y[fed.validation]
    for n, evaluator in ada.items():
        print(f"AdaRound {n} iterations per layer")
        print(f"{'setting':>8} {'basic s':>8} {'adaround s':>11} {'ratio':>6}" + ("  validation % basic -> adaround"
                                                                                   if len(val_y) else ""))
        for setting in settings:
            t_basic, t_ada = [], []
            for _ in range(args.repeats):
                t = time.perf_counter()
                basic.deploy(state, setting)
                t_basic.append(time.perf_counter() - t)
                t = time.perf_counter()
                evaluator.deploy(state, setting)
                t_ada.append(time.perf_counter() - t)
            ratio = statistics.median(b / a for a, b in zip(t_basic, t_ada, strict=True))
            line = f"{setting_name(setting):>8} {statistics.median(t_basic):8.2f} {statistics.median(t_ada):11.2f} {ratio:6.1f}"
            if len(val_y):
                after = accuracy(evaluator.model, fed.data, val_x, val_y)[0]
                before = accuracy(basic.deploy(state, setting), fed.data, val_x, val_y)[0]
                line += f"  {100 * before:.2f} -> {100 * after:.2f}"
            print(line)

if __name__ == "__main__":
    main()
