"""What the bit-width buys on disk and in onnxruntime (CPU, one thread) for exported models.

A briefly trained model (seeded) is deployed at each setting exactly as the server evaluates it
(``Evaluator.deploy``: first/last layers pinned at 8 bits, BatchNorm re-estimated), exported with
:func:`fedquant.export.onnx_export.export_model`, and measured: the file's size beside the
analytic ``model_bytes``, and onnxruntime's latency at batch 1 and batch 64 with one intra-op
thread (median over interleaved repeats: every repeat times every setting in turn, so drifts in
machine speed hit all settings alike). The session is onnxruntime's default one; "integer
kernels" lists the integer ops its optimizer left in the graph (QLinearConv, QGemm, ...): where
there are none, the QDQ model runs float Conv/Gemm on dequantized weights and can only be slower
than fp (the QuantizeLinear/DequantizeLinear pairs are extra work). ``--accuracy`` adds the test
accuracy of the simulated model and of onnxruntime (exact: float biases; default: onnxruntime's
int32 bias rounding, see :mod:`fedquant.export.check`).

    python -m benchmarks.timing.onnx_latency              # Fashion-MNIST CNN, 1,024 calibration images
    python -m benchmarks.timing.onnx_latency --accuracy   # plus test accuracy, simulated vs onnxruntime
    python -m benchmarks.timing.onnx_latency --tiny       # digits MLP (used by the tests)
"""

from __future__ import annotations

import argparse
import collections
import statistics
import tempfile
import time
from pathlib import Path

import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F

from fedquant.experiment.workspace import DataSpec, ModelSpec, build_quantized_model, federated_data
from fedquant.export.check import onnx_accuracy, session
from fedquant.export.onnx_export import export_model
from fedquant.federation.bitwidths import parse_settings, setting_name
from fedquant.learning.evaluation import EvalProtocol, Evaluator, accuracy, model_bytes
from fedquant.models.state import float_state

SETTINGS = ["fp", "w8a8", "w6a6", "w4a4", "w3a3", "w2a2"]
INTEGER_OPS = ("QLinearConv", "QGemm", "QLinearMatMul", "MatMulInteger", "ConvInteger", "MatMulIntegerToFloat",
               "DynamicQuantizeMatMul", "MatMulNBits", "QLinearAdd")


def train(spec: ModelSpec, fed, steps: int, seed: int = 0) -> dict:
    """``steps`` SGD steps (batch 64, lr 0.05, momentum 0.9) in float on the clients' images."""
    model = build_quantized_model(spec, fed.data, seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    pool = torch.cat(fed.clients)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        idx = pool[torch.randint(len(pool), (64,), generator=g)]
        loss = F.cross_entropy(model(fed.data.normalize(fed.data.train_x[idx])), fed.data.train_y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return float_state(model)


def integer_kernels(blob: bytes) -> str:
    """The integer ops onnxruntime's default optimizer leaves in the graph, e.g. ``QLinearConv x2``."""
    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.log_severity_level = 3
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(blob, options, providers=["CPUExecutionProvider"])
        ops = collections.Counter(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node)
    found = [f"{op} x{ops[op]}" for op in INTEGER_OPS if ops[op]]
    return ", ".join(found) or "none (float Conv/Gemm)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="digits MLP instead of the Fashion-MNIST CNN")
    parser.add_argument("--settings", nargs="+", default=SETTINGS)
    parser.add_argument("--repeats", type=int, default=15, help="interleaved rounds of timings")
    parser.add_argument("--calls", type=int, default=10, help="batch-1 calls per setting and round")
    parser.add_argument("--train-steps", type=int, default=None, help="SGD steps before export (default 200; tiny 50)")
    parser.add_argument("--accuracy", action="store_true", help="also test accuracy: simulated vs onnxruntime")
    args = parser.parse_args()
    torch.set_num_threads(1)
    name, arch, holdout = ("digits", "mlp", 256) if args.tiny else ("fmnist", "cnn", 1024)
    steps = args.train_steps if args.train_steps is not None else (50 if args.tiny else 200)
    fed = federated_data(DataSpec(name, None, "iid", (), 10, holdout, 0, 0))  # no validation split
    spec = ModelSpec(arch, (), (("pin_first_last", True),))
    state = train(spec, fed, steps)
    settings = parse_settings(args.settings, "--settings")
    evaluator = Evaluator(build_quantized_model(spec, fed.data), fed.data, fed.calibration, fed.validation,
                          settings, EvalProtocol())
    data = fed.data
    rows = {}
    for setting in settings:
        model = evaluator.deploy(state, setting)
        blob = export_model(model, data.image_shape, setting_name(setting)).to_bytes()
        row = {"file": len(blob), "model_bytes": model_bytes(model, setting), "kernels": integer_kernels(blob),
               "session": session(blob, exact=False), "b1": [], "b64": []}
        if args.accuracy:
            exact = session(blob, exact=True)
            row["acc"] = (accuracy(model, data, data.test_x, data.test_y)[0],
                          onnx_accuracy(exact, data, data.test_x, data.test_y)[0],
                          onnx_accuracy(row["session"], data, data.test_x, data.test_y)[0])
        rows[setting_name(setting)] = row
    x64 = data.normalize(data.test_x[:64]).numpy()
    x1 = x64[:1].copy()
    for r in range(args.repeats + 1):  # round 0 warms up
        for row in rows.values():
            sess = row["session"]
            t = time.perf_counter()
            sess.run(None, {"input": x64})
            t64 = time.perf_counter() - t
            t1 = []
            for _ in range(args.calls):
                t = time.perf_counter()
                sess.run(None, {"input": x1})
                t1.append(time.perf_counter() - t)
            if r:
                row["b64"].append(t64)
                row["b1"].append(statistics.median(t1))
    fp = rows.get("fp")
    print(f"{name} {arch}: {steps} SGD steps, {len(fed.calibration)} calibration images, first/last layers at 8 bits; "
          f"onnxruntime {ort.__version__} CPU, 1 thread, default graph optimizations; medians of {args.repeats} "
          f"interleaved rounds ({args.calls} batch-1 calls each)")
    head = f"{'setting':>8} {'file bytes':>11} {'model_bytes':>11} {'vs fp':>6} {'batch 1 ms':>10} {'batch 64 ms':>11} " \
           f"{'vs fp':>6}  integer kernels"
    print(head + ("  | test acc: simulated / ort exact / ort default" if args.accuracy else ""))
    for key, row in rows.items():
        b1, b64 = statistics.median(row["b1"]) * 1e3, statistics.median(row["b64"]) * 1e3
        size = f"{row['file'] / fp['file']:.2f}" if fp else "-"
        speed = f"{statistics.median(fp['b64']) * 1e3 / b64:.2f}" if fp else "-"
        line = f"{key:>8} {row['file']:>11,} {row['model_bytes']:>11,} {size:>6} {b1:>10.3f} {b64:>11.2f} {speed:>6}  " \
               f"{row['kernels']}"
        if args.accuracy:
            line += "  | " + " / ".join(f"{100 * a:.2f}" for a in row["acc"])
        print(line)
    print("vs fp: file size as a fraction of fp's; batch-64 speed-up over fp (above 1 = faster)")


if __name__ == "__main__":
    main()
