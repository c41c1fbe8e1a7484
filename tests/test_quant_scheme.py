"""Quantizer schemes (fedquant.quant.scheme): power-of-two scales by one rounding rule
(fedquant.quant.grids.pow2_scale), per-tensor weights on a per-channel state, and the post-training
steps that must keep both (calibration, AdaRound, LSQ, integer biases)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fedquant.learning.evaluation import model_bytes
from fedquant.quant import (
    QuantConfig,
    Scheme,
    calibrate,
    quant_layers,
    quantize_model,
    set_bitwidth,
    set_scheme,
)
from fedquant.quant.adaround import AdaRoundConfig, adaround
from fedquant.quant.grids import (
    asymmetric_qparams,
    host_asymmetric_qparams,
    host_pow2_scale,
    pow2_scale,
    symmetric_scale,
)
from fedquant.quant.integer_bias import bias_grid, quantize_biases
from fedquant.quant.lsq import LSQWeight
from fedquant.quant.quantizers import WeightQuantizer


def is_pow2(x: torch.Tensor) -> bool:
    """Every float32 entry is exactly 2^k: positive, normal, mantissa bits 0."""
    bits = x.detach().float().reshape(-1).numpy().view(np.uint32)
    exponent = (bits >> 23) & 0xFF
    return bool(((bits & 0x807FFFFF) == 0).all() and (exponent > 0).all() and (exponent < 0xFF).all())


def test_pow2_rounds_the_float_scale_up_to_a_power_of_two():
    """max|w| = 0.3 at 4 bits: s_float = 0.3 / 7 = 0.042857, s_pow2 = 2^ceil(log2 0.042857) = 2^-4."""
    assert symmetric_scale(torch.tensor([0.3]), 4).item() == pytest.approx(0.3 / 7)
    assert symmetric_scale(torch.tensor([0.3]), 4, pow2=True).item() == 0.0625
    # an exact power of two stays (7 * 2^-4 / 7), one ulp above it goes up to the next
    exact = torch.tensor([0.4375], dtype=torch.float32)
    assert symmetric_scale(exact, 4, pow2=True).item() == 0.0625
    above = torch.nextafter(torch.tensor([0.0625]), torch.tensor([1.0]))
    assert pow2_scale(above).item() == 0.125 and pow2_scale(torch.tensor([0.0625])).item() == 0.0625
    # activations: range [-1, 3] at 4 bits: s_float = 4/15, s_pow2 = 0.5, z = round(1 / 0.5) = 2
    s, z = asymmetric_qparams(torch.tensor(-1.0), torch.tensor(3.0), 4, pow2=True)
    assert (s.item(), z.item()) == (0.5, 2.0)
    assert host_asymmetric_qparams(-1.0, 3.0, 4, pow2=True) == (0.5, 2.0)
    # the weight itself: 0.3 / 0.0625 = 4.8 -> 5, so 0.3125 (the top of the 4-bit grid is 0.4375)
    wq = WeightQuantizer(torch.zeros(1, 2), "per_tensor", pow2=True)
    wq.set_bits(4)
    assert wq(torch.tensor([[0.3, -0.1]])).tolist() == [[0.3125, -0.125]]


def test_pow2_is_exact_never_clips_and_host_equals_tensor():
    s = torch.logspace(-9, 3, 2001, dtype=torch.float32)
    p = pow2_scale(s)
    assert is_pow2(p) and (p >= s).all() and (p < 2 * s).all()
    assert [host_pow2_scale(v) for v in s.tolist()] == p.tolist()
    lo, hi = -torch.rand(200) * 3, torch.rand(200) * 5
    for bits in (2, 4, 8):
        tensor_s, tensor_z = asymmetric_qparams(lo, hi, bits, pow2=True)
        host = [host_asymmetric_qparams(a, b, bits, pow2=True) for a, b in zip(lo.tolist(), hi.tolist(), strict=True)]
        assert [(float(a), float(b)) for a, b in zip(tensor_s, tensor_z, strict=True)] == host
        assert is_pow2(tensor_s) and ((hi - lo.clamp(max=0)) <= tensor_s * (2**bits - 1)).all()


def test_per_tensor_and_per_channel_scale_shapes():
    """A per-channel state runs either way (per tensor: one scale, from max(clip) * max|w|); a
    per-tensor state cannot run per channel."""
    torch.manual_seed(0)
    model = quantize_model(nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)), QuantConfig(4, 4))
    layer = next(quant_layers(model))
    wq, w = layer.weight_quantizer, layer.weight.detach()
    assert wq.scale(w).shape == (5,) and wq.scale_at(w, 4).shape == (5, 1) and wq.clip.shape == (5,)
    per_channel_bytes = model_bytes(model, (4, 4))
    set_scheme(model, Scheme("per_tensor", "float"))
    assert wq.scale(w).shape == (1,) and wq.scale_at(w, 4).shape == (1,) and wq.clip.shape == (5,)
    assert wq.scale(w).item() == pytest.approx(w.abs().max().item() / 7)
    assert torch.equal(wq(w), torch.fake_quantize_per_tensor_affine(w, wq.scale(w).item(), 0, -7, 7))
    set_scheme(model, Scheme("per_tensor", "pow2"))
    assert is_pow2(wq.scale(w)) and wq.scale(w).shape == (1,)
    assert model_bytes(model, (4, 4)) < per_channel_bytes  # one int8 exponent instead of 5 float32 scales
    tensor_state = quantize_model(nn.Sequential(nn.Linear(6, 5)), QuantConfig(4, 4, weight_granularity="per_tensor"))
    with pytest.raises(ValueError, match="weight_granularity='per_channel' is not valid .* is per_tensor"):
        set_scheme(tensor_state, Scheme("per_channel", "float"))


def small_model(granularity: str) -> tuple[nn.Module, list[torch.Tensor]]:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, bias=True), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    model = quantize_model(model, QuantConfig(4, 4))
    set_scheme(model, Scheme(granularity, "pow2"))
    return model, [torch.randn(16, 1, 8, 8) for _ in range(2)]


@pytest.mark.parametrize("act_range", ["minmax", "mse", "percentile"])
def test_calibration_gives_power_of_two_scales(act_range):
    model, batches = small_model("per_channel")
    calibrate(model, batches, act_range, weight_range="mse")
    for layer in quant_layers(model):
        assert is_pow2(layer.weight_quantizer.scale(layer.weight)) and is_pow2(layer.input_quantizer.qparams()[0])


@pytest.mark.parametrize("granularity", ["per_channel", "per_tensor"])
def test_adaround_keeps_the_power_of_two_scales(granularity):
    model, batches = small_model(granularity)
    calibrate(model, batches, weight_range="mse")
    before = [layer.weight_quantizer.scale(layer.weight).clone() for layer in quant_layers(model)]
    stats = adaround(model, batches, AdaRoundConfig(iterations=10, batch_size=8))
    assert len(stats) == 2
    for layer, scale in zip(quant_layers(model), before, strict=True):
        wq = layer.weight_quantizer
        after = wq.scale(layer.weight)
        assert torch.equal(after, scale) and is_pow2(after)
        assert after.numel() == (layer.weight.shape[0] if granularity == "per_channel" else 1)
        assert torch.equal(wq(layer.weight), layer.weight)  # the rounded weights lie on that grid


def test_lsq_snaps_the_step_forward_and_passes_its_gradient_straight_through():
    """With pow2, LSQ quantizes with s_pow2 and differentiates as if s were s_pow2: the same as
    float LSQ at the range r' = s_pow2 * Q_P whose float step is exactly s_pow2."""
    torch.manual_seed(2)
    x = torch.randn(4, 9)
    rng = torch.tensor([0.3, 1.7, 0.05, 2.2])
    out, grads = [], []
    for r, pow2 in ((rng, True), (symmetric_scale(rng, 3, pow2=True) * 3, False)):
        xi, ri = x.clone().requires_grad_(), r.clone().requires_grad_()
        y = LSQWeight.apply(xi, ri, 3, True, True, pow2)
        (y * torch.arange(36.0).reshape(4, 9)).sum().backward()
        out.append(y.detach())
        grads.append((xi.grad, ri.grad))
    assert torch.equal(out[0], out[1]) and torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])
    assert is_pow2(symmetric_scale(rng, 3, pow2=True))


def test_integer_bias_grid_is_a_power_of_two_and_batchnorm_is_not_folded():
    torch.manual_seed(3)
    model = quantize_model(nn.Sequential(nn.Conv2d(1, 3, 3, bias=True), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(),
                                         nn.Linear(3 * 6 * 6, 2)), QuantConfig(4, 4, scale="pow2"))
    batches = [torch.randn(8, 1, 8, 8)]
    model.train()
    model(batches[0])  # BatchNorm statistics away from their initial values
    calibrate(model, batches)
    conv, linear = quant_layers(model)
    bn_bias = model[1].bias.detach().clone()
    grids = [bias_grid(layer) for layer in (conv, linear)]
    assert all(is_pow2(g) for g in grids)
    quantize_biases(model, {"0": "1"})
    assert torch.equal(model[1].bias, bn_bias)  # the BatchNorm stays a float affine after the conv
    for layer, grid in zip((conv, linear), grids, strict=True):
        q = layer.bias.detach() / grid
        assert torch.equal(q, q.round())


def test_the_default_scheme_is_per_channel_float_and_switches_back_exactly():
    torch.manual_seed(4)
    model = quantize_model(nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)), QuantConfig(4, 4))
    x = torch.randn(7, 6)
    set_bitwidth(model, 4, 4)
    model.train()
    model(x)  # observe the activation ranges once, then keep them
    model.eval()
    reference = model(x).detach()
    set_scheme(model, Scheme("per_tensor", "pow2"))
    assert not torch.equal(model(x), reference)
    set_scheme(model, Scheme())
    assert Scheme.of(QuantConfig().__dict__) == Scheme() and torch.equal(model(x), reference)
