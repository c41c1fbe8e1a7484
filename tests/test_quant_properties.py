"""Property tests of the fake quantizers (hypothesis)."""

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fedquant.quant import ActivationQuantizer, WeightQuantizer, asymmetric_qparams

bits_st = st.sampled_from([2, 3, 4, 6, 8])
finite = st.floats(-100, 100, allow_nan=False, width=32)
matrices = arrays(np.float32, st.tuples(st.integers(1, 4), st.integers(1, 16)), elements=finite)


def wq_for(w, bits, granularity="per_channel"):
    wq = WeightQuantizer(w, granularity)
    wq.set_bits(bits)
    return wq


def aq_for(lo, hi, bits):
    aq = ActivationQuantizer().eval()
    aq.min_val.fill_(lo)
    aq.max_val.fill_(hi)
    aq.set_bits(bits)
    return aq


@settings(max_examples=60, deadline=None)
@given(matrices, bits_st, st.sampled_from(["per_channel", "per_tensor"]))
def test_weight_properties(w, bits, granularity):
    w = torch.from_numpy(w)
    wq = wq_for(w, bits, granularity)
    q = wq(w)
    scale = wq.scale(w).reshape(-1, 1)
    # |w - q(w)| <= s/2 (every weight is inside its range max|w|)
    assert bool(((w - q).abs() <= scale / 2 * (1 + 1e-5) + 1e-12).all())
    # at most 2^b distinct values per channel, zero exactly representable
    for row in q:
        assert len(torch.unique(row)) <= 2**bits
    assert torch.equal(wq(torch.zeros_like(w)), torch.zeros_like(w))
    # idempotent: with the same scale exactly; through the module up to float rounding of max|w|
    qmin, qmax = -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1
    zp = torch.zeros(scale.numel(), dtype=torch.int32)
    fq = (lambda t: torch.fake_quantize_per_channel_affine(t, scale.reshape(-1), zp, 0, qmin, qmax)) \
        if granularity == "per_channel" else \
        (lambda t: torch.fake_quantize_per_tensor_affine(t, scale.reshape(1), zp, qmin, qmax))
    assert torch.equal(fq(q), q)
    assert torch.allclose(wq(q), q, rtol=1e-5, atol=1e-30)


@settings(max_examples=60, deadline=None)
@given(arrays(np.float32, st.integers(1, 64), elements=finite), bits_st,
       st.floats(-50, 0, width=32), st.floats(0.015625, 50, width=32))
def test_activation_properties(x, bits, lo, hi):
    x = torch.from_numpy(x)
    aq = aq_for(lo, hi, bits)
    q = aq(x)
    scale, zp = asymmetric_qparams(aq.min_val, aq.max_val, bits)
    assert torch.equal(aq(q), q)  # idempotent (range frozen in eval mode)
    assert len(torch.unique(q)) <= 2**bits
    assert aq(torch.zeros(3)).abs().max().item() == 0.0  # zero exactly representable
    grid_lo, grid_hi = (0 - zp) * scale, (2**bits - 1 - zp) * scale
    inside = (x >= grid_lo) & (x <= grid_hi)
    assert bool(((x - q).abs()[inside] <= scale / 2 * (1 + 1e-5) + 1e-6).all())
