"""Empirical bias correction (Nagel et al. 2019, "Data-Free Quantization"; white paper arXiv
2106.08295 §4.2).

Quantization error ``eps = W~ - W`` shifts a layer's output mean by ``E[y_q - y_fp] = E[eps x]``
(plus whatever earlier layers shifted). Measured on calibration data, per output channel, it is
subtracted from the (float) bias: ``b <- b - E[y_q - y_fp]``. Layers are corrected in definition
order, so each one is measured with the corrected layers before it.
"""

from __future__ import annotations

import torch
from torch import nn

from .adaround import run_to_layer
from .modules import quant_layers


@torch.no_grad()
def _mean_output(model: nn.Module, layer: nn.Module, batches: list[torch.Tensor]) -> torch.Tensor:
    """Per-output-channel mean of ``layer``'s output over ``batches``, in float64: the channel
    axis is 1 for a convolution and the last one for a linear layer (which may see ``[B, tokens,
    C]`` inputs, as in a transformer)."""
    total, count = [], []
    axis = 1 if isinstance(layer, nn.Conv2d) else -1

    def record(y: torch.Tensor) -> None:
        channel = axis % y.dim()
        total.append(y.double().sum([d for d in range(y.dim()) if d != channel]))
        count.append(y.numel() // y.shape[channel])

    run_to_layer(model, layer, batches, record, output=True)
    return torch.stack(total).sum(0) / sum(count)


@torch.no_grad()
def correct_bias(model: nn.Module, float_model: nn.Module, batches: list[torch.Tensor]) -> dict[str, float]:
    """For each quantized layer of ``model`` that has a bias (definition order):
    ``bias -= E[y_q - y_fp]`` per output channel, with ``y_fp`` the layer's pre-activation output
    in ``float_model`` (same architecture, quantizers off, or the plain float model) and ``y_q``
    its output in ``model`` as currently configured (quantized weights and activations), both
    over ``batches`` in eval mode. Layers without a bias (conv followed by BatchNorm) are
    skipped: re-estimating BatchNorm on the calibration data (:func:`reestimate_batchnorm`)
    removes the same mean shift there. Returns the mean ``|shift|`` per corrected layer."""
    layers = list(quant_layers(model))
    refs = [m for m in float_model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    if len(refs) != len(layers):
        raise ValueError(f"float_model has {len(refs)} conv/linear layers, model {len(layers)}")
    if any(m.weight_quantizer.bits or m.input_quantizer.bits for m in quant_layers(float_model)):
        raise ValueError("float_model must have its quantizers off (set_bitwidth(model, None, None))")
    names = {m: n for n, m in model.named_modules()}
    modes = model.training, float_model.training
    model.eval()
    float_model.eval()
    shifts = {}
    try:
        for layer, ref in zip(layers, refs, strict=True):
            if layer.bias is None:
                continue
            shift = _mean_output(model, layer, batches) - _mean_output(float_model, ref, batches)
            layer.bias -= shift.to(layer.bias.dtype)
            shifts[names[layer]] = shift.abs().mean().item()
    finally:
        model.train(modes[0])
        float_model.train(modes[1])
    return shifts
