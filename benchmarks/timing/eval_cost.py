"""Server evaluation of six settings (with calibration) against one float evaluation.

Same model, same test set, same Evaluator. The two are timed in adjacent pairs and the median of
the per-pair ratios is reported, so drifts in machine speed (large here) cancel.

    python -m benchmarks.timing.eval_cost            # Fashion-MNIST CNN, 1,024 calibration images
    python -m benchmarks.timing.eval_cost --tiny     # digits MLP (used by the tests)
"""

from __future__ import annotations

import argparse
import statistics
import time

from benchmarks.common import allocator_option, apply_allocator_option
from fedquant.experiment.workspace import DataSpec, ModelSpec, build_quantized_model, federated_data
from fedquant.federation.bitwidths import parse_settings
from fedquant.learning.evaluation import EvalProtocol, Evaluator
from fedquant.models.state import float_state

SIX = ["fp", "w8a8", "w6a6", "w4a4", "w3a3", "w2a2"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--act-range", default="minmax", choices=["minmax", "mse", "percentile"])
    allocator_option(parser)
    args = parser.parse_args()
    allocator = apply_allocator_option(args)
    name, model, holdout = ("digits", "mlp", 256) if args.tiny else ("fmnist", "cnn", 1024)
    fed = federated_data(DataSpec(name, None, "iid", (), 10, holdout, 0, 0))  # no validation split: test set only
    net = build_quantized_model(ModelSpec(model, (), ()), fed.data)
    state = float_state(net)
    make = lambda settings: Evaluator(build_quantized_model(ModelSpec(model, (), ()), fed.data), fed.data,  # noqa: E731
                                      fed.calibration, fed.validation, parse_settings(settings, "s"),
                                      EvalProtocol(act_range=args.act_range))
    float_eval, six_eval = make(["fp"]), make(SIX)
    float_eval(state), six_eval(state)  # warm-up
    t_fp, t_six = [], []
    for _ in range(args.repeats):
        t = time.perf_counter()
        float_eval(state)
        t_fp.append(time.perf_counter() - t)
        t = time.perf_counter()
        six_eval(state)
        t_six.append(time.perf_counter() - t)
    fp, six = statistics.median(t_fp), statistics.median(t_six)
    ratio = statistics.median(b / a for a, b in zip(t_fp, t_six, strict=True))
    print(f"{name} {model}: test set {len(fed.data.test_y)}, calibration {len(fed.calibration)} images, "
          f"activation ranges {args.act_range}, BatchNorm re-estimated for every setting (fp included), {allocator}")
    print(f"one float evaluation {fp:.2f} s; six settings {six:.2f} s (medians of {args.repeats}); "
          f"ratio {ratio:.2f} (median of per-pair ratios)")


if __name__ == "__main__":
    main()
