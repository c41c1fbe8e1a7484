"""BatchNorm in the exported graph: folded into the conv before it, or a float node.

**BatchNorm.** The simulation quantizes the *unfolded* conv weight and applies BatchNorm in float
to the conv's output: ``BN(conv(x_hat, q s)) = conv(x_hat, q s) * a + c`` per output channel, with
``a = gamma / sqrt(var + eps)`` and ``c = beta - mean * a``. Folding BN into the float weights
before quantizing (``W a``, then a new grid) would deploy other integers than the ones evaluated.
Because the weight scale is per output channel, a positive ``a`` moves into the *dequantization*
scale instead: ``conv(x_hat, q (s a)) + c``, the same integers with scale ``s a`` and bias ``c``:
exact in real arithmetic (float32 rounding differs by ulps), and the conv-with-bias form that QDQ
toolchains expect. A per-tensor weight scale becomes per channel there (the integers are
unchanged). A conv whose ``a`` has a zero or negative entry (no positive scale absorbs it) keeps
its BN as a float ``BatchNormalization`` node after the DQ'd conv, as does every BN with
``fold_batchnorm=False`` and every BN after a conv with power-of-two scales (``s a`` is no power
of two; the simulation does not fold it either: :func:`fedquant.quant.integer_bias.folds_batchnorm`),
so that every scale of such a conv in the file is ``2^k``; float convs fold BN into their weights
(``W a``, ``c``) as usual.
GroupNorm depends on the data and stays a float ``GroupNormalization`` node (opset 21: one scale
and bias per channel). The encodings' ``batchnorm`` entry says what happened to each BN: a folded
conv's ``param_encodings`` hold the folded scale ``s a``, i.e. the scale of the stored integers.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from ..quant.graph import batchnorm_user
from ..quant.integer_bias import folds_batchnorm
from ..quant.modules import QuantLayerMixin
from .builder import NodeBuilder, f32


def bn_affine(bn: nn.BatchNorm2d) -> tuple[np.ndarray, np.ndarray]:
    """``(a, c)`` with ``BN(y) = y * a + c`` per channel (computed in float64, stored float32)."""
    if bn.running_mean is None:
        raise ValueError(f"{bn}: BatchNorm without running statistics cannot be exported")
    mean, var = bn.running_mean.double(), bn.running_var.double()
    gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(mean)
    beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(mean)
    a = gamma / torch.sqrt(var + bn.eps)
    return f32(a.numpy()), f32((beta - mean * a).numpy())


class BatchNormNodes(NodeBuilder):
    """Which BatchNorm folds into the conv before it (the conv itself is
    :meth:`fedquant.export.ops.OpNodes.layer`), and the float ``BatchNormalization`` node of one
    that does not."""

    def foldable_batchnorm(self, node: fx.Node, layer: nn.Module) -> tuple[fx.Node, np.ndarray, np.ndarray] | None:
        """The BatchNorm right after conv ``node`` (its only user) and its ``(a, c)``, when it
        can be folded (module docstring); else None."""
        user = batchnorm_user(node, self.modules) if self.fold_batchnorm else None
        if user is None:
            return None
        bn = self.modules[user.target]
        a, c = bn_affine(bn)
        quantized = isinstance(layer, QuantLayerMixin) and layer.weight_quantizer.bits is not None
        if quantized and not folds_batchnorm(layer):
            self.batchnorm[user.target] = (f"kept as float BatchNormalization after {node.target} (power-of-two "
                                           "scales: s_w a is no power of two)")
            return None
        if quantized and not (np.isfinite(a).all() and (a > 0).all()):
            self.batchnorm[user.target] = f"kept as float BatchNormalization after {node.target} (a scale <= 0)"
            return None
        return user, a, c

    def float_batchnorm(self, qualname: str, m: nn.BatchNorm2d, x: str, name: str) -> str:
        if m.running_mean is None:
            raise ValueError(f"{qualname}: BatchNorm without running statistics cannot be exported")
        gamma = m.weight.detach().numpy() if m.weight is not None else np.ones(m.num_features)
        beta = m.bias.detach().numpy() if m.bias is not None else np.zeros(m.num_features)
        inputs = [x] + [self.const(f"{qualname}.{k}", f32(v)) for k, v in (
            ("weight", gamma), ("bias", beta), ("running_mean", m.running_mean.numpy()),
            ("running_var", m.running_var.numpy()))]
        return self.op("BatchNormalization", inputs, name, epsilon=float(m.eps))
