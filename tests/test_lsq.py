"""Learned ranges: LSQ (Esser et al. 2020) for weights, LSQ+ (Bhalgat et al. 2020) for activations.

The references below restate the papers' formulas in numpy (no autograd, no fedquant code): the
forward ``s * rint(clip(x / s, -Q_N, Q_P))`` (eq. 3), ``dL/dx`` (eq. 5), ``dL/ds`` (eq. 4) with the
gradient scale ``g = 1 / sqrt(N Q_P)``, and the mapping of the step's SGD update onto the stored
range (``dr = Q_P ds`` for weights; ``dlo = dbeta``, ``dhi = dbeta + Q_P ds`` for activations).
"""

import math

import numpy as np
import pytest
import torch
from torch import nn

from fedquant.quant import (
    ActivationQuantizer,
    QuantConfig,
    WeightQuantizer,
    quant_layers,
    quantize_model,
    set_bitwidth,
)

DTYPES = [torch.float32, torch.float64]


def ref_weight(x, r, bits, narrow, per_channel, gy):
    """LSQ on ``[-Q_N, Q_P]``, ``s = |r| / Q_P``: x_hat, dL/dx, dL/dr = sign(r) Q_P g dL/ds, and
    the L1 mass of dL/dr's terms (float32 sums round relative to it)."""
    qp = 2 ** (bits - 1) - 1
    qn = qp if narrow else qp + 1
    axes = tuple(range(1, x.ndim)) if per_channel else None
    s = np.abs(r) / x.dtype.type(qp)
    s = s.reshape((-1,) + (1,) * (x.ndim - 1)) if per_channel else s
    v = x / s
    x_hat = np.rint(np.clip(v, -qn, qp)) * s
    inside = (-qn < v) & (v < qp)
    dv_ds = np.where(inside, np.rint(v) - v, np.where(v <= -qn, -qn, qp))
    g = 1 / math.sqrt((x[0].size if per_channel else x.size) * qp)
    factor = np.where(r < 0, -1.0, 1.0) * qp * g
    return (x_hat, gy * inside, factor * (gy * dv_ds).sum(axis=axes).reshape(r.shape),
            qp * g * np.abs(gy * dv_ds).sum(axis=axes).reshape(r.shape))


def ref_activation(x, lo, hi, bits, gy):
    """LSQ+ on ``[0, Q_P]`` with step s and offset beta = -z s: (x_hat, dL/dx, dL/dlo, dL/dhi)."""
    qp = 2**bits - 1
    lo_, hi_ = min(lo, 0.0), max(hi, 0.0)
    s = x.dtype.type(hi_ - lo_) / x.dtype.type(qp)
    z = float(np.clip(np.rint(-lo_ / s), 0, qp))
    v = x / s  # (x - beta) / s = v + z
    x_hat = np.rint(np.clip(v, -z, qp - z)) * s
    inside = (-z < v) & (v < qp - z)
    g = 1 / math.sqrt(x[0].size * qp)
    if lo < 0 < hi:  # LSQ+: s and beta free; dx_hat/ds at fixed beta, dx_hat/dbeta = 1 when clipped
        ds = (gy * np.where(inside, np.rint(v) - v, np.where(v >= qp - z, qp, 0))).sum()
        dbeta = (gy * ~inside).sum()
        return x_hat, gy * inside, g * dbeta, g * (dbeta + qp * ds)
    if lo >= 0:  # grid bottom pinned at 0 (z = 0): unsigned LSQ, hi = Q_P s
        ds = (gy * np.where(inside, np.rint(v) - v, np.where(v <= 0, 0, qp))).sum()
        return x_hat, gy * inside, 0.0, g * qp * ds
    # grid top pinned at 0 (z = Q_P): LSQ on [-Q_P, 0], lo = -Q_P s
    ds = (gy * np.where(inside, np.rint(v) - v, np.where(v <= -qp, -qp, 0))).sum()
    return x_hat, gy * inside, -g * qp * ds, 0.0


def with_specials(x, s, lo_q, hi_q):
    """``x`` (flat) with grid ties ``(k + 1/2) s``, both grid ends, values just past them (clipped
    by LSQ but rounded back inside by round-then-clip) and values far outside."""
    ks = np.arange(lo_q - 1, hi_q + 1)
    ends = np.array([lo_q, hi_q, hi_q + 0.25, lo_q - 0.25, 1e3 * hi_q, -1e3 * hi_q]) * s
    specials = np.concatenate([(ks + 0.5) * s, ends])
    x = x.copy()
    n = min(len(specials), x.size)
    x.reshape(-1)[:n] = specials[:n]
    return x


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("narrow", [True, False])
@pytest.mark.parametrize("granularity", ["per_tensor", "per_channel"])
def test_weight_forward_and_gradients_match_lsq(dtype, bits, narrow, granularity):
    qp = 2 ** (bits - 1) - 1
    qn = qp if narrow else qp + 1
    np_dtype = np.float32 if dtype == torch.float32 else np.float64
    rng = np.random.default_rng(bits)
    per_channel = granularity == "per_channel"
    step = 2.0 ** -np.arange(2, 6)  # power-of-two steps: the ties below are exact
    if per_channel:
        r = (step * qp * np.array([1, -1, 1, 1])).astype(np_dtype)  # a negative range: sign(r)
        x = rng.normal(size=(4, 2, 3, 5)).astype(np_dtype) * step.reshape(-1, 1, 1, 1) * qp
        x = np.stack([with_specials(x[c], step[c], -qn, qp) for c in range(4)])
    else:
        r = np.array([step[0] * qp], dtype=np_dtype)
        x = with_specials(rng.normal(size=(6, 40)).astype(np_dtype) * r[0], step[0], -qn, qp)
    gy = rng.normal(size=x.shape).astype(np_dtype)

    w = torch.from_numpy(x).requires_grad_()
    wq = WeightQuantizer(w, granularity, narrow, learned=True).to(dtype)
    wq.range.data = torch.from_numpy(r)
    wq.set_bits(bits)
    out = wq(w)
    out.backward(torch.from_numpy(gy))

    x_hat, dx, dr, mass = ref_weight(x, r, bits, narrow, per_channel, gy)
    np.testing.assert_array_equal(out.detach().numpy(), x_hat)
    np.testing.assert_array_equal(w.grad.numpy(), dx)
    np.testing.assert_allclose(wq.range.grad.numpy(), dr, rtol=1e-6, atol=1e-6 * mass.max())
    assert wq.range.grad.shape == wq.range.shape == ((4,) if per_channel else (1,))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("where", ["free", "relu", "positive", "negative"])
def test_activation_forward_and_gradients_match_lsq_plus(dtype, bits, where):
    qp = 2**bits - 1
    s = 0.25
    z = {"free": qp // 3, "relu": 0, "positive": 0, "negative": qp}[where]
    lo, hi = -z * s, (qp - z) * s  # s = (hi - lo) / Q_P exactly
    if where == "positive":
        lo = 0.5  # widened to 0: same grid as "relu", but lo is a dead end
    if where == "negative":
        hi = -0.5
    np_dtype = np.float32 if dtype == torch.float32 else np.float64
    rng = np.random.default_rng(bits)
    x = rng.normal(size=(3, 2, 70)).astype(np_dtype) * qp * s / 2 + (qp / 2 - z) * s
    x = with_specials(x, s, -z, qp - z)
    gy = rng.normal(size=x.shape).astype(np_dtype)

    aq = ActivationQuantizer(learned=True).to(dtype).eval()
    aq.min_val.data.fill_(lo)
    aq.max_val.data.fill_(hi)
    aq.set_bits(bits)
    xt = torch.from_numpy(x).requires_grad_()
    out = aq(xt)
    out.backward(torch.from_numpy(gy))

    x_hat, dx, dlo, dhi = ref_activation(x, lo, hi, bits, gy)
    np.testing.assert_array_equal(out.detach().numpy(), x_hat)
    np.testing.assert_array_equal(xt.grad.numpy(), dx)
    mass = np.abs(gy).sum() * qp / math.sqrt(x[0].size * qp)
    np.testing.assert_allclose(aq.min_val.grad.item(), dlo, rtol=1e-6, atol=1e-6 * mass)
    np.testing.assert_allclose(aq.max_val.grad.item(), dhi, rtol=1e-6, atol=1e-6 * mass)
    if where in ("relu", "positive"):
        assert aq.min_val.grad.item() == 0.0
    if where == "negative":
        assert aq.max_val.grad.item() == 0.0


def test_per_tensor_gradient_scale_counts_every_weight():
    """Tiling the weight k times along C_out multiplies dL/ds and N by k: with N = all weights the
    range gradient grows by k / sqrt(k) = sqrt(k); with N = w[0].numel() it would grow by k."""
    w = torch.randn(3, 8, dtype=torch.float64) * 0.5
    gy = torch.randn(3, 8, dtype=torch.float64)
    grads = []
    for k in (1, 4):
        wk = w.repeat(k, 1).requires_grad_()
        wq = WeightQuantizer(wk, "per_tensor", learned=True).double()
        wq.range.data.fill_(0.8)  # clips some weights
        wq.set_bits(3)
        wq(wk).backward(gy.repeat(k, 1))
        grads.append(wq.range.grad.item())
    assert grads[1] == pytest.approx(2.0 * grads[0], rel=1e-9)
    assert grads[1] != pytest.approx(4.0 * grads[0], rel=1e-3)


def test_clip_happens_before_round_at_the_top_of_the_grid():
    """``x / s = 1.3`` at 2 bits (Q_P = 1): round-then-clip keeps it on the grid (dL/dx = 1,
    dx_hat/ds = round(1.3) - 1.3 = -0.3), LSQ clips it first (dL/dx = 0, dx_hat/ds = Q_P = 1)."""
    x = torch.tensor([[1.3]], requires_grad=True)
    wq = WeightQuantizer(x, "per_tensor", narrow_range=True, learned=True)
    wq.range.data.fill_(1.0)  # s = 1
    wq.set_bits(2)
    out = wq(x)
    out.backward(torch.ones_like(out))
    assert out.item() == 1.0
    assert x.grad.item() == 0.0
    assert wq.range.grad.item() == pytest.approx(1.0)  # Q_P * g * Q_P with g = 1 / sqrt(1 * 1)

    # torch's learnable kernel (the previous implementation) rounds first and disagrees.
    xs = x.detach().clone().requires_grad_()
    scale = torch.ones(1, requires_grad=True)
    fq = torch._fake_quantize_learnable_per_tensor_affine
    fq(xs, scale, torch.zeros(1), -1, 1, 1.0).backward()
    assert xs.grad.item() == 1.0 and scale.grad.item() == pytest.approx(-0.3)


EXPECTED_KEYS = [
    "0.weight", "0.bias", "0.weight_quantizer.range", "0.weight_quantizer.clip",
    "0.input_quantizer.min_val", "0.input_quantizer.max_val",
    "3.weight", "3.bias", "3.weight_quantizer.range", "3.weight_quantizer.clip",
    "3.input_quantizer.min_val", "3.input_quantizer.max_val",
]


def test_learned_ranges_train_across_bit_widths():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    config = QuantConfig(weight_bits=4, act_bits=4, learned_ranges=True)
    model = quantize_model(model, config).train()
    assert list(model.state_dict()) == EXPECTED_KEYS
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items() if "quantizer" in k}
    assert shapes["0.weight_quantizer.range"] == (4,) and shapes["3.input_quantizer.min_val"] == ()
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 3, (16,))
    model(x)  # initialise the activation ranges
    start = {k: v.clone() for k, v in model.state_dict().items() if "quantizer" in k}
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for bits in [(4, 4), (2, 2), (8, 3), (3, 8), (None, 4), (2, 2)]:
        set_bitwidth(model, *bits)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        assert torch.isfinite(loss)
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        opt.step()
    state = model.state_dict()
    assert list(state) == EXPECTED_KEYS
    assert all(torch.isfinite(v).all() for v in state.values())
    for key in ["0.weight_quantizer.range", "3.weight_quantizer.range", "0.input_quantizer.min_val",
                "0.input_quantizer.max_val", "3.input_quantizer.max_val"]:
        assert not torch.equal(state[key], start[key]), key
    # The Linear's input is a ReLU output: its range bottom is pinned at 0 (unsigned LSQ).
    assert state["3.input_quantizer.min_val"].item() == 0.0
    layers = list(quant_layers(model))
    assert all(layer.weight_quantizer.range.requires_grad for layer in layers)
