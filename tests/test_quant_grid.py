"""Exact quantization grids: literal hand-computed values and the numpy formula, per bit-width."""

import numpy as np
import pytest
import torch

from fedquant.quant import (
    ActivationQuantizer,
    WeightQuantizer,
    act_grid,
    asymmetric_qparams,
    weight_grid,
)
from fedquant.quant.grids import host_asymmetric_qparams

BITS = [2, 3, 4, 6, 8]


def weight_quantizer(w, bits, granularity="per_channel", narrow=True):
    wq = WeightQuantizer(w, granularity, narrow)
    wq.set_bits(bits)
    return wq


def test_weight_grid_literal_values():
    w = torch.tensor([[0.9, -0.3, 0.31, -0.05]])
    # 3 bits narrow: s = 0.9 / 3 = 0.3, q = [3, -1, 1, 0]
    assert torch.allclose(weight_quantizer(w, 3)(w), torch.tensor([[0.9, -0.3, 0.3, 0.0]]), atol=1e-7)
    # 2 bits: s = 0.9, q = [1, 0, 0, 0]
    assert torch.allclose(weight_quantizer(w, 2)(w), torch.tensor([[0.9, 0.0, 0.0, 0.0]]), atol=1e-7)


@pytest.mark.parametrize("narrow, expected", [(True, [-0.45, 0.45, 0.0]), (False, [-0.9, 0.45, 0.0])])
def test_full_vs_narrow_grid_at_2_bits(narrow, expected):
    assert weight_grid(2, narrow) == ((-1, 1) if narrow else (-2, 1))
    w = torch.tensor([[-0.9, 0.9, 0.2]])
    wq = weight_quantizer(w, 2, narrow=narrow)
    wq.set_clip(torch.full_like(wq.clip, 0.5))  # range 0.45 -> s = 0.45; -0.9 / s = -2 exists only on the full grid
    assert torch.allclose(wq(w), torch.tensor([expected]), atol=1e-7)


def test_activation_grid_literal_values():
    # range [-1, 3] at 2 bits: s = 4/3, z = round(0.75) = 1, grid (q - 1) * 4/3
    scale, zp = asymmetric_qparams(torch.tensor(-1.0), torch.tensor(3.0), 2)
    assert scale.item() == pytest.approx(4 / 3) and zp.item() == 1
    aq = ActivationQuantizer().eval()
    aq.min_val.fill_(-1.0)
    aq.max_val.fill_(3.0)
    aq.set_bits(2)
    out = aq(torch.tensor([-1.0, 0.5, 0.7, 3.0, 9.0]))
    assert torch.allclose(out, torch.tensor([-4 / 3, 0.0, 4 / 3, 8 / 3, 8 / 3]), atol=1e-6)


def numpy_weight_fq(w, bits, narrow, per_channel):
    axes = tuple(range(1, w.ndim)) if per_channel else None
    absmax = np.abs(w).max(axis=axes, keepdims=True)
    s = (np.maximum(absmax, 1e-8) / (2 ** (bits - 1) - 1)).astype(np.float32)
    qmin, qmax = weight_grid(bits, narrow)
    return (np.clip(np.rint(w / s), qmin, qmax) * s).astype(np.float32), s


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("granularity", ["per_channel", "per_tensor"])
@pytest.mark.parametrize("narrow", [True, False])
def test_weight_fake_quant_matches_formula_and_torch_op(bits, granularity, narrow):
    w = torch.randn(6, 3, 3, 3) * torch.linspace(0.1, 2, 6).reshape(6, 1, 1, 1)
    ours = weight_quantizer(w, bits, granularity, narrow)(w)
    expected, s = numpy_weight_fq(w.numpy(), bits, narrow, granularity == "per_channel")
    np.testing.assert_allclose(ours.numpy(), expected, rtol=0, atol=1e-6)
    qmin, qmax = weight_grid(bits, narrow)
    scale = torch.from_numpy(s.reshape(-1))
    if granularity == "per_channel":
        ref = torch.fake_quantize_per_channel_affine(w, scale, torch.zeros(6, dtype=torch.int32), 0, qmin, qmax)
    else:
        ref = torch.fake_quantize_per_tensor_affine(w, scale, torch.zeros(1, dtype=torch.int32), qmin, qmax)
    assert torch.equal(ours, ref)


@pytest.mark.parametrize("bits", BITS)
def test_activation_fake_quant_matches_formula_and_torch_op(bits):
    x = torch.randn(4, 8, 5, 5) * 2 + 0.5
    aq = ActivationQuantizer().eval()
    aq.min_val.fill_(-1.5)
    aq.max_val.fill_(4.0)
    aq.set_bits(bits)
    ours = aq(x)
    qmax = act_grid(bits)[1]
    s = np.float32(5.5 / qmax)
    z = np.rint(1.5 / s)
    expected = (np.clip(np.rint(x.numpy() / s) + z, 0, qmax) - z) * s
    np.testing.assert_allclose(ours.numpy(), expected, rtol=0, atol=1e-5)
    ref = torch.fake_quantize_per_tensor_affine(x, float(s), int(z), 0, qmax)
    assert torch.equal(ours, ref)


def test_straight_through_gradient_is_clipping_mask():
    aq = ActivationQuantizer().eval()
    aq.min_val.fill_(0.0)
    aq.max_val.fill_(1.0)
    aq.set_bits(4)
    x = torch.linspace(-0.5, 1.5, 101, requires_grad=True)
    upstream = torch.randn(101)
    aq(x).backward(upstream)
    s = 1.0 / 15
    q = torch.round(x.detach() / s)
    mask = ((q >= 0) & (q <= 15)).float()
    assert torch.equal(x.grad, upstream * mask)
    assert mask.sum() < 101 and mask.sum() > 50  # both regions are exercised

    w = torch.randn(4, 6, requires_grad=True)
    wq = weight_quantizer(w, 3)
    g = torch.randn(4, 6)
    wq(w).backward(g)
    assert torch.equal(w.grad, g)  # range = max|w| per channel: nothing is clipped


def test_clipped_weights_get_masked_gradient_also_after_loading():
    w = torch.tensor([[-0.9, 0.9, 0.2, 0.1]], requires_grad=True)
    wq = weight_quantizer(w, 4)
    wq.set_clip(torch.full_like(wq.clip, 0.5))  # range 0.45: -0.9 and 0.9 are clipped
    wq(w).backward(torch.ones(1, 4))
    assert w.grad.tolist() == [[0.0, 0.0, 1.0, 1.0]]
    fresh = weight_quantizer(w, 4)
    fresh.load_state_dict(wq.state_dict())
    assert not fresh.clips_nothing(7)
    w.grad = None
    fresh(w).backward(torch.ones(1, 4))
    assert w.grad.tolist() == [[0.0, 0.0, 1.0, 1.0]]


def test_frozen_weights_are_quantized_once_and_follow_changes():
    w = torch.nn.Parameter(torch.randn(4, 6))
    wq = weight_quantizer(w, 4)
    with torch.no_grad():
        first = wq(w)
        assert wq(w) is first  # reused while nothing changed
        w.mul_(2)  # in-place update (as load_state_dict does)
        assert torch.equal(wq(w), 2 * first)
        wq.set_bits(2)
        expected, _ = numpy_weight_fq(w.detach().numpy(), 2, True, True)
        np.testing.assert_allclose(wq(w).numpy(), expected, atol=1e-6)
        wq.set_clip(torch.full_like(wq.clip, 0.5))
        assert not torch.equal(wq(w), torch.from_numpy(expected))
    assert wq(w).requires_grad  # with gradients: computed fresh, differentiable


def test_frozen_weights_follow_a_new_learned_range():
    w = torch.nn.Parameter(torch.tensor([[0.9, -0.3, 0.31, -0.06]]))
    wq = WeightQuantizer(w, learned=True)
    wq.set_bits(3)
    with torch.no_grad():
        before = wq(w)
        wq.range.fill_(0.3)  # only the learned range changes (s = 0.1)
        assert not torch.equal(wq(w), before)
        assert torch.allclose(wq(w), torch.tensor([[0.3, -0.3, 0.3, -0.1]]), atol=1e-6)


def test_channels_last_inputs_give_the_same_values_gradients_and_layout():
    torch.manual_seed(0)
    x = torch.randn(4, 6, 5, 5) * 2
    w = torch.randn(6, 6, 3, 3)
    aq = ActivationQuantizer().eval()
    aq.min_val.fill_(-1.5)
    aq.max_val.fill_(2.0)
    aq.set_bits(3)
    wq = weight_quantizer(w, 4)
    wq.set_clip(torch.linspace(0.5, 1.0, 6))  # some channels clipped: the masked STE path
    outs = []
    for fmt in (torch.contiguous_format, torch.channels_last):
        xi = x.clone(memory_format=fmt).requires_grad_()
        wi = w.clone(memory_format=fmt).requires_grad_()
        ya, yw = aq(xi), wq(wi)
        (ya * torch.arange(ya.numel()).reshape(ya.shape)).sum().backward()
        (yw * torch.arange(yw.numel()).reshape(yw.shape)).sum().backward()
        assert ya.is_contiguous(memory_format=fmt) and yw.is_contiguous(memory_format=fmt)
        outs.append((ya.detach(), yw.detach(), xi.grad, wi.grad))
    for a, b in zip(*outs, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("bits", BITS)
def test_cpu_zero_point_in_the_clamp_bounds_equals_shifting_by_it(bits):
    """On CPU the zero-point moves into the clamp bounds; values and STE mask must equal the
    formula with the shift, also far outside the range (where round(x/s) + z is not exact)."""
    big = [3e7, -3e7, 1e30, -1e30, float("inf"), float("-inf"), 16777217.0, -16777217.0]
    x = torch.cat([torch.randn(997) * 3, torch.tensor(big)]).requires_grad_()
    lo, hi = torch.tensor(-1.3), torch.tensor(2.9)
    aq = ActivationQuantizer().eval()
    aq.min_val.copy_(lo)
    aq.max_val.copy_(hi)
    aq.set_bits(bits)
    out = aq(x)
    out.backward(torch.ones_like(out))
    s, z = asymmetric_qparams(lo, hi, bits)
    shifted = torch.round(x.detach() * s.reciprocal()) + z
    expected = (shifted.clamp(0, 2**bits - 1) - z) * s
    assert torch.equal(out.detach(), expected)
    assert torch.equal(x.grad, ((shifted >= 0) & (shifted <= 2**bits - 1)).float())
    assert 0 < x.grad.sum() < len(x)  # both sides of the mask are exercised


@pytest.mark.parametrize("bits", [*BITS, 16])
def test_a_clip_a_few_ulps_below_one_clips_nothing(bits):
    """Averaging clip = 1 over clients gives 0.99999976; that must not turn on the masked STE
    (slower) and indeed nothing is clipped: the explicit mask is all ones."""
    torch.manual_seed(bits)
    w = (torch.randn(16, 40) * torch.logspace(-3, 1, 16).unsqueeze(1)).requires_grad_()
    wq = weight_quantizer(w, bits)
    wq.set_clip(torch.full_like(wq.clip, 0.99999976))
    qmax = weight_grid(bits, True)[1]
    assert wq.clips_nothing(qmax)
    wq(w).backward(torch.ones_like(w))
    q = torch.round(w.detach() * wq.scale(w).reshape(-1, 1).reciprocal())
    assert bool(((q >= -qmax) & (q <= qmax)).all()) and torch.equal(w.grad, torch.ones_like(w))
    wq.set_clip(torch.full_like(wq.clip, qmax / (qmax + 0.5)))  # the largest |w| rounds outside
    assert not wq.clips_nothing(qmax)


def test_masked_weight_quantization_keeps_the_strides_of_a_one_channel_conv_weight():
    w = torch.randn(32, 1, 3, 3).to(memory_format=torch.channels_last).requires_grad_()  # as model.to() makes it
    assert w.stride() == (9, 1, 3, 1)  # size-1 channel dim: ambiguous, conv reads it as channels_last
    wq = weight_quantizer(w, 4)
    wq.set_clip(torch.full_like(wq.clip, 0.5))  # the masked (out-of-place) path
    assert wq(w).stride() == w.stride()
    conv = torch.nn.functional.conv2d
    x = torch.randn(2, 1, 8, 8).contiguous(memory_format=torch.channels_last)
    assert conv(x, wq(w)).is_contiguous(memory_format=torch.channels_last)


def test_host_qparams_equal_the_tensor_formula_bit_for_bit():
    """CPU activation quantizers compute scale and zero-point on host floats in float32 arithmetic."""
    gen = torch.Generator().manual_seed(0)
    magnitude = torch.logspace(-10, 6, 3000)
    lo = torch.cat([-torch.rand(3000, generator=gen) * magnitude, torch.tensor([0.0, 0.0, 2.0, -0.5, -1e-9, -3e38])])
    hi = torch.cat([torch.rand(3000, generator=gen) * magnitude, torch.tensor([0.0, -1.0, 3.0, 0.5, 1e-9, 3e38])])
    for bits in range(2, 17):
        scale, zero_point = asymmetric_qparams(lo, hi, bits)
        host = torch.tensor([host_asymmetric_qparams(a, b, bits) for a, b in zip(lo.tolist(), hi.tolist(), strict=True)])
        assert torch.equal(host[:, 0].float(), scale) and torch.equal(host[:, 1].float(), zero_point)
    assert host_asymmetric_qparams(-0.5, 0.5, 2) == (float(np.float32(1 / 3)), 2.0)  # -lo / s = 1.5: ties to even


@pytest.mark.parametrize("tracking", ["running", "hindsight"])
def test_host_scalar_path_equals_the_device_path(tracking):
    """Range tracking, values and STE gradients match the device path (used on GPUs) bit for bit."""
    gen = torch.Generator().manual_seed(1)
    host, device = ActivationQuantizer(tracking, momentum=0.37), ActivationQuantizer(tracking, momentum=0.37)
    device.host_scalars = False
    for step in range(40):
        x = torch.randn(8, 3, 5, 5, generator=gen) * 10 ** (step % 7 - 3) + step % 3 - 1
        x = torch.zeros_like(x) if step == 0 else x  # max == min: the range stays unobserved
        results = []
        for aq in (host, device):
            aq.set_bits(BITS[step % len(BITS)])
            aq.train(step < 30)
            xi = x.clone().requires_grad_()
            out = aq(xi)
            out.backward(torch.arange(out.numel(), dtype=out.dtype).reshape(out.shape))
            results.append((out.detach(), xi.grad, aq.min_val.clone(), aq.max_val.clone()))
        for a, b in zip(*results, strict=True):
            assert torch.equal(a, b), step
    assert host.max_val > host.min_val


@pytest.mark.parametrize("granularity", ["per_channel", "per_tensor"])
def test_weight_range_is_the_largest_magnitude(granularity):
    w = torch.tensor([[0.5, -2.0, 1.0], [0.0, -0.0, 0.0], [3.0, -3.0, 0.25], [-0.125, 0.0, 0.0]])
    absmax = WeightQuantizer(w, granularity).absmax(w)
    expected = w.abs().amax(dim=1) if granularity == "per_channel" else w.abs().amax().reshape(1)
    assert torch.equal(absmax, expected)
    assert absmax.tolist() == ([2.0, 0.0, 3.0, 0.125] if granularity == "per_channel" else [3.0])


@pytest.mark.parametrize("granularity", ["per_channel", "per_tensor"])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_quantize_at_clip_is_the_clipped_symmetric_grid(granularity, bits):
    """Calibration's public entry point: ``s = clip * max|w| / (2^(b-1) - 1)``,
    ``w_hat = s * clamp(round(w / s), -(2^(b-1) - 1), 2^(b-1) - 1)`` (narrow grid), per channel."""
    torch.manual_seed(bits)
    w = torch.randn(5, 3, 3, 3)
    wq = WeightQuantizer(w, granularity, narrow_range=True)
    wq.set_bits(bits)
    clip = torch.linspace(0.3, 1.0, 5) if granularity == "per_channel" else torch.tensor([0.6])
    qmax = 2 ** (bits - 1) - 1
    if granularity == "per_channel":
        s = (clip * w.abs().flatten(1).max(1).values / qmax).view(-1, 1, 1, 1)
    else:
        s = clip * w.abs().max() / qmax
    expected = s * torch.clamp(torch.round(w / s), -qmax, qmax)
    assert torch.allclose(wq.quantize_at_clip(w, clip), expected, rtol=0, atol=1e-6)


def test_observed_activations_pass_through_and_set_range_keeps_it_non_empty():
    aq = ActivationQuantizer()
    aq.set_bits(2)
    seen = []
    aq.observe(seen.append)
    x = torch.rand(4, 3)
    assert aq(x) is x and seen == [x]
    aq.observe(None)
    aq.set_range(torch.tensor(0.0), torch.tensor(0.0))  # e.g. a layer that only ever saw zeros
    assert aq.min_val.item() == 0.0 and aq.max_val.item() > 0.0
