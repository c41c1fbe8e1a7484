"""Model-level quantization: float pass-through, switching, state_dict names, calibration."""

import copy

import pytest
import torch
from torch import nn

from fedquant.data import load_dataset
from fedquant.models import build_model
from fedquant.quant import (
    QuantConfig,
    calibrate,
    get_bitwidth,
    quant_layers,
    quantize_model,
    reestimate_batchnorm,
    set_bitwidth,
)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def cnn_pair():
    shape = type("D", (), {"image_shape": (1, 28, 28), "num_classes": 10})()
    model = build_model("cnn", shape)
    return model, quantize_model(copy.deepcopy(model), QuantConfig(weight_bits=None, act_bits=None))


def test_float_mode_is_bit_identical_and_switching_is_reversible():
    ref, q = cnn_pair()
    x = torch.randn(16, 1, 28, 28)
    ref.train(), q.train()
    assert torch.equal(ref(x), q(x))  # training mode too: BN batch statistics identical
    ref.eval(), q.eval()
    assert torch.equal(ref(x), q(x))
    set_bitwidth(q, 4, 4)
    calibrate(q, [x])
    w4a4 = q(x)
    assert not torch.equal(w4a4, ref(x))
    set_bitwidth(q, None, None)
    assert torch.equal(q(x), ref(x))
    set_bitwidth(q, 4, 4)
    assert torch.equal(q(x), w4a4)


def test_state_dict_names_survive_and_load_both_ways():
    ref, q = cnn_pair()
    float_keys, q_keys = set(ref.state_dict()), set(q.state_dict())
    assert float_keys <= q_keys
    assert all(".weight_quantizer." in k or ".input_quantizer." in k for k in q_keys - float_keys)
    fresh = build_model("cnn", type("D", (), {"image_shape": (1, 28, 28), "num_classes": 10})())
    missing = fresh.load_state_dict(q.state_dict(), strict=False)
    assert not missing.missing_keys
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, q.state_dict()[k])
    result = q.load_state_dict(ref.state_dict(), strict=False)
    assert not result.unexpected_keys and set(result.missing_keys) == q_keys - float_keys


def test_pinned_first_and_last_layers_stay_at_8_bits():
    _, q = cnn_pair()
    quantize_model(q2 := copy.deepcopy(cnn_pair()[0]), QuantConfig(weight_bits=4, act_bits=4, pin_first_last=True))
    layers = list(quant_layers(q2))
    assert [m.weight_quantizer.bits for m in layers] == [8, 4, 4, 8]
    assert get_bitwidth(q2) == (4, 4)
    set_bitwidth(q2, None, None)
    assert all(m.weight_quantizer.bits is None for m in layers)


def test_mse_calibration_beats_minmax_on_heavy_tails():
    torch.manual_seed(1)
    model = quantize_model(nn.Sequential(nn.Linear(64, 8)), QuantConfig(weight_bits=None, act_bits=3))
    x = torch.distributions.Laplace(0.0, 1.0).sample((512, 64))
    x[0, 0] = 40.0  # one outlier stretches the min-max range
    errors = {}
    for est in ("minmax", "mse"):
        calibrate(model, [x], act_range=est)
        q = model[0].input_quantizer
        errors[est] = (q(x) - x).pow(2).mean().item()
    assert errors["mse"] < 0.5 * errors["minmax"]


def test_running_vs_hindsight_range_tracking():
    outs = {}
    for tracking in ("running", "hindsight"):
        model = quantize_model(nn.Sequential(nn.Linear(4, 2)),
                               QuantConfig(weight_bits=None, act_bits=8, range_tracking=tracking, momentum=1.0)).train()
        aq = model[0].input_quantizer
        aq(torch.tensor([0.0, 1.0]))  # first batch initialises the range to [0, 1]
        outs[tracking] = aq(torch.tensor([0.0, 10.0]))
        assert (aq.min_val.item(), aq.max_val.item()) == (0.0, 10.0)
    assert outs["running"][1].item() == pytest.approx(10.0)
    assert outs["hindsight"][1].item() == pytest.approx(1.0)  # quantized with the range before it


def test_learned_ranges_receive_lsq_gradients(digits):
    model = quantize_model(build_model("mlp", digits), QuantConfig(weight_bits=4, act_bits=4, learned_ranges=True))
    x = digits.normalize(digits.train_x[:64])
    model.train()
    model(x)  # initialise activation ranges
    loss = nn.functional.cross_entropy(model(x), digits.train_y[:64])
    loss.backward()
    layer = next(iter(quant_layers(model)))
    assert layer.weight_quantizer.range.grad.abs().sum() > 0
    assert layer.input_quantizer.max_val.grad.abs() > 0


def test_batchnorm_reestimation_is_exact_mean():
    torch.manual_seed(0)
    model = quantize_model(nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2)), QuantConfig(None, None)).eval()
    batches = [torch.randn(8, 1, 4, 4) + i for i in range(3)]
    reestimate_batchnorm(model, batches)
    with torch.no_grad():
        means = torch.stack([model[0](b).mean((0, 2, 3)) for b in batches]).mean(0)
    assert torch.allclose(model[1].running_mean, means, atol=1e-5)
    assert not model.training and model[1].momentum == 0.1


@pytest.mark.parametrize("call, match", [
    (lambda: QuantConfig(weight_bits=1), "weight_bits=1 is out of range"),
    (lambda: QuantConfig(act_bits=17), "act_bits=17 is out of range"),
    (lambda: QuantConfig(weight_bits=4.5), "weight_bits=4.5 is not valid"),
    (lambda: QuantConfig(weight_bits="4"), "weight_bits='4' is not valid"),
    (lambda: QuantConfig(weight_granularity="per_row"), "allowed are per_channel, per_tensor"),
    (lambda: QuantConfig(range_tracking="ema"), "allowed are running, hindsight"),
    (lambda: calibrate(quantize_model(nn.Linear(2, 2)), [torch.zeros(1, 2)], act_range="kl"), "allowed are minmax, mse, percentile"),
    (lambda: quantize_model(nn.Sequential(nn.ReLU())), "no quantizable layer: allowed layer types are Linear, Conv2d"),
    (lambda: set_bitwidth(quantize_model(nn.Linear(2, 2)), 0, 4), "weight_bits=0 is out of range"),
])
def test_bad_input_raises_value_error_naming_value_and_allowed(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_calibrate_with_bn_reestimation_matches_separate_reestimation():
    torch.manual_seed(0)
    float_model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 3))
    one = quantize_model(copy.deepcopy(float_model), QuantConfig(4, 4))
    two = quantize_model(copy.deepcopy(float_model), QuantConfig(4, 4))
    one.eval(), two.eval()
    batches = [torch.randn(16, 1, 8, 8) * 2 + 1 for _ in range(3)]
    calibrate(one, batches, reestimate_bn=True)
    set_bitwidth(two, 4, None)  # BN statistics with quantized weights and float activations
    reestimate_batchnorm(two, batches)
    assert torch.allclose(one[1].running_mean, two[1].running_mean, atol=1e-6)
    assert torch.allclose(one[1].running_var, two[1].running_var, atol=1e-5)
    assert one[1].momentum == 0.1 and not one[1].training
