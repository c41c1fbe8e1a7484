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

**Where a quantized file's logits differ** (:func:`compare`). Both sides compute every
pre-quantization value in float32, in different orders (oneDNN vs MLAS summation, BatchNorm
applied after the conv vs folded into its weights, ``x * (1/s)`` vs ``x / s``), so the two values
differ by float32 rounding, well under 0.001 of a grid step. Where such a value lies that close to
a rounding boundary ``(k + 1/2) s`` (a *tie* at float precision), the two round to neighbouring
codes; what that code feeds then differs by real amounts (*downstream* codes move too), and each
moved code of the last layer's input moves the logits by ``s_x |w|`` (about 1e-2), where they
otherwise agree to float precision (the last Gemm gets the same codes and weights). Ties are rare,
about one code in 10^5, and rarer the coarser the grid (the same float error is a smaller share
of a larger step), so 256 check images show them mostly at W8A8 but not only there (the digits
CNN on all 360 test images: W6A6 too). At 8-bit activations onnxruntime also fuses a conv with the
QuantizeLinear after it into QLinearConv (int32 accumulation, requantized with a float
multiplier; a narrower grid's Clip prevents that), one more way to round the same ties. The
check fetches every QuantizeLinear's input and output, which keeps the graph unfused, and sorts
each moved code into *tie* (the two inputs agree to :data:`TIE_STEP` of a step and lie that close
to a rounding boundary: with the same grid on both sides, one implies the other), *downstream*
(an earlier code of the same image moved) or *unexplained* (neither: a real mismatch); the
printed logit difference is that session's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from torch import nn

from ..data import Dataset
from .encodings import activation_encoding
from .onnx_export import Exported

BIAS_QUANTIZATION = "WeightBiasQuantization"  # onnxruntime's pass: float bias -> int32 (>= 1.21)
TIE_STEP = 1e-3  # two pre-quantization values closer than this many grid steps differ by float rounding only
QUANTIZER = ".input_quantizer.q"  # a QuantizeLinear is named after the layer whose input it quantizes


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


def non_pow2_scales(model: onnx.ModelProto) -> list[str]:
    """The scale initializers (``*.scale``: every QuantizeLinear/DequantizeLinear scale, the int32
    bias grids included) that are not exactly a power of two in float32: sign 0, exponent field in
    1..254 (normal) and mantissa bits 0. A model with power-of-two scales has none."""
    bad = []
    for tensor in model.graph.initializer:
        if tensor.name.endswith(".scale"):
            bits = numpy_helper.to_array(tensor).astype(np.float32).reshape(-1).view(np.uint32)
            exponent = (bits >> 23) & 0xFF
            if ((bits & 0x807FFFFF) != 0).any() or (exponent == 0).any() or (exponent == 0xFF).any():
                bad.append(tensor.name)
    return bad


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


@dataclass(frozen=True)
class Agreement:
    """The exported file (run exactly) against the simulated model on the same images: the
    largest logit difference and every activation code (QuantizeLinear output) compared, the
    moved ones sorted by cause (module docstring)."""

    logit_diff: float
    images: int
    argmax: int  # images whose predicted class is the same
    codes: int = 0
    ties: int = 0
    downstream: int = 0
    unexplained: int = 0
    max_step: int = 0

    @property
    def moved(self) -> int:
        return self.ties + self.downstream + self.unexplained

    def describe(self) -> str:
        """`` (N of M activation codes one step apart: ...)`` when codes moved, else ``""``."""
        if not self.moved:
            return ""
        apart = "one step" if self.max_step == 1 else f"up to {self.max_step} steps"
        causes = [f"{n} {what}" for n, what in ((self.ties, "at rounding ties"), (self.downstream, "downstream"),
                                                (self.unexplained, "UNEXPLAINED: a real mismatch")) if n]
        return (f" ({self.moved} of {self.codes:,} activation codes {apart} apart: {', '.join(causes)}; "
                f"same class on {self.argmax}/{self.images} images)")


def _with_quantizer_outputs(proto: onnx.ModelProto) -> tuple[bytes, list[onnx.NodeProto]]:
    """``proto`` with every QuantizeLinear's output (and input, unless the graph input) also a
    graph output, and those nodes in graph order (a topological order)."""
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    graph = model.graph
    typed = {v.name: v for v in graph.value_info}
    quantizers = [n for n in graph.node if n.op_type == "QuantizeLinear"]
    inputs = {i.name for i in graph.input}
    names = dict.fromkeys(t for n in quantizers for t in (n.input[0], n.output[0]) if t not in inputs)
    graph.output.extend(typed[t] for t in names)
    return model.SerializeToString(), quantizers


def _simulated(model: nn.Module, exported: Exported, quantizers: list[onnx.NodeProto],
               x: torch.Tensor) -> tuple[np.ndarray, dict[str, tuple[np.ndarray, np.ndarray, float]]]:
    """The simulation's logits and, per QuantizeLinear output, the input its quantizer saw, the
    code it chose, ``round(x_hat / s) + z`` (``x_hat`` lies on the grid, so this is exact), and
    ``s``."""
    seen, hooks = {}, []
    modules = dict(model.named_modules())
    for node in quantizers:
        quantizer = modules[exported.layers[node.output[0].removesuffix(QUANTIZER)]].input_quantizer
        enc = activation_encoding(quantizer)
        s, z = np.float32(enc.scale[0]), int(enc.zero_point[0])

        def keep(module, args, out, name=node.output[0], s=s, z=z) -> None:
            seen[name] = (args[0].numpy().copy(), np.rint(out.numpy() / s).astype(np.int64) + z, float(s))
        hooks.append(quantizer.register_forward_hook(keep))
    try:
        with torch.inference_mode():
            out = model(x).numpy()
    finally:
        for hook in hooks:
            hook.remove()
    return out, seen


def _moved_codes(q: np.ndarray, sim_q: np.ndarray, onnx_x: np.ndarray, sim_x: np.ndarray,
                 s: float) -> tuple[np.ndarray, np.ndarray, int]:
    """One quantizer's codes over a batch (file ``q``, simulation ``sim_q``; their float inputs):
    the image index of each moved code, whether it is a tie (the inputs agree to :data:`TIE_STEP`
    of a step and ``x / s`` lies that close to ``k + 1/2``), and the largest move in steps."""
    q = q.astype(np.int64)
    sim_q = sim_q.reshape(q.shape)
    moved = np.nonzero(q != sim_q)
    a, b = onnx_x.reshape(q.shape)[moved], sim_x.reshape(q.shape)[moved]
    v = b / s
    tie = (np.abs(a - b) <= TIE_STEP * s) & (np.abs(v - np.floor(v) - 0.5) <= TIE_STEP)
    return moved[0], tie, int(np.abs(q - sim_q).max(initial=0))


def _tally(counts: dict, quantizers: list[onnx.NodeProto], got: dict[str, np.ndarray],
           seen: dict[str, tuple[np.ndarray, np.ndarray, float]], x: np.ndarray) -> None:
    """Add one batch's codes to ``counts``, quantizers in graph order: a moved code that is no tie
    is *downstream* when an earlier quantizer moved a code of the same image, else *unexplained*."""
    earlier = np.zeros(len(x), dtype=bool)
    for node in quantizers:
        sim_x, sim_q, s = seen[node.output[0]]
        q = got[node.output[0]]
        images, tie, step = _moved_codes(q, sim_q, got.get(node.input[0], x), sim_x, s)
        after = earlier[images]
        counts["codes"] += q.size
        counts["ties"] += int(tie.sum())
        counts["downstream"] += int((~tie & after).sum())
        counts["unexplained"] += int((~tie & ~after).sum())
        counts["max_step"] = max(counts["max_step"], step)
        earlier[images] = True


def compare(model: nn.Module, exported: Exported, x: torch.Tensor, batch_size: int = 64) -> Agreement:
    """The file ``exported`` of ``model`` (eval mode) against ``model`` on the float inputs ``x``,
    in an exact session that also returns every QuantizeLinear's input and output: the logit
    difference, the moved activation codes and their causes (module docstring)."""
    blob, quantizers = _with_quantizer_outputs(exported.model)
    sess = session(blob)
    names = [o.name for o in sess.get_outputs()]
    counts = dict(logit_diff=0.0, argmax=0, codes=0, ties=0, downstream=0, unexplained=0, max_step=0)
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size].contiguous()
        got = dict(zip(names, sess.run(names, {sess.get_inputs()[0].name: xb.numpy()}), strict=True))
        ref, seen = _simulated(model, exported, quantizers, xb)
        out = got[names[0]]
        counts["logit_diff"] = max(counts["logit_diff"], float(np.abs(out - ref).max()))
        counts["argmax"] += int((out.argmax(1) == ref.argmax(1)).sum())
        _tally(counts, quantizers, got, seen, xb.numpy())
    return Agreement(images=len(x), **counts)
