"""Run an exported model with onnxruntime (CPU) and compare it with the simulated model.

The exported graph takes the normalised float image (:meth:`fedquant.data.Dataset.normalize`)
and returns logits; accuracy and loss are computed as
:func:`fedquant.learning.evaluation.accuracy` computes them for the simulation.

Two ways to run a file. *Exact*: onnxruntime without its ``WeightBiasQuantization`` graph pass,
i.e. the ONNX semantics of the file (float biases, as simulated); the only differences from the
simulation are then float summation order (MLAS vs oneDNN) and ``x / s`` vs ``x * (1 / s)`` in
QuantizeLinear, which move a handful of integer codes by one step where a value lies within ulps
of a rounding boundary (see :mod:`fedquant.export.onnx_export`). *Default*: onnxruntime as
configured out of the box (1.32): that pass rounds the float bias of every QDQ Conv/Gemm whose
output is re-quantized to int32 on the grid ``s_x * s_w`` (error up to half a step per output
channel) so that it can fuse integer kernels (QLinearConv); at 4 bits and below that step is
coarse enough to move logits visibly.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F

from ..data import Dataset

BIAS_QUANTIZATION = "WeightBiasQuantization"  # onnxruntime's pass: float bias -> int32 (>= 1.21)


def session(model: bytes, exact: bool = True, threads: int = 1) -> ort.InferenceSession:
    """A CPU session over a serialized model with ``threads`` intra-op threads (1: one core).

    ``exact=True`` turns off onnxruntime's ``WeightBiasQuantization`` pass, so the session
    computes what the file says (float biases); ``False`` is onnxruntime's default, which rounds
    each float bias feeding a QDQ Conv/Gemm to int32 on the grid ``s_x * s_w`` to reach its integer
    kernels (module docstring)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # no warnings about serialising optimised models
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"],
                                disabled_optimizers=[BIAS_QUANTIZATION] if exact else [])


def logits(sess: ort.InferenceSession, x: torch.Tensor | np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Logits of the float input ``x`` (normalised, NCHW), in batches."""
    x = x.contiguous().numpy() if isinstance(x, torch.Tensor) else np.ascontiguousarray(x)
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i:i + batch_size].astype(np.float32)})[0]
                           for i in range(0, len(x), batch_size)])


def onnx_accuracy(sess: ort.InferenceSession, data: Dataset, x: torch.Tensor, y: torch.Tensor,
                  batch_size: int = 256) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of the exported model on uint8 images ``x``."""
    correct, loss = 0, 0.0
    for i in range(0, len(x), batch_size):
        out = torch.from_numpy(logits(sess, data.normalize(x[i:i + batch_size]), batch_size))
        yb = y[i:i + batch_size]
        correct += int((out.argmax(1) == yb).sum())
        loss += float(F.cross_entropy(out, yb, reduction="sum").double())
    return correct / len(x), loss / len(x)
