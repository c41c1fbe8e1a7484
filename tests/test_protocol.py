"""The evaluation protocol: deployment defaults, one BatchNorm rule, separate weight/activation
ranges, the calibration/validation split and model size, with exact numbers."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from fedquant.app import check_config
from fedquant.experiment.specs import experiment_specs, server_evaluator
from fedquant.experiment.workspace import build_quantized_model, federated_data
from fedquant.learning.evaluation import EvalProtocol, Evaluator, accuracy, model_bytes
from fedquant.models.state import float_state, load_float_state
from fedquant.quant import (
    QuantConfig,
    calibrate,
    quant_layers,
    quantize_model,
    reestimate_batchnorm,
    set_bitwidth,
)
from fedquant.quant.graph import batchnorm_after
from fedquant.quant.integer_bias import quantize_biases
from tests.helpers import make_config


def test_default_config_deploys_first_and_last_layer_at_8_bits_and_says_so():
    cfg = make_config()
    check_config(cfg)
    data_spec, model_spec = experiment_specs(cfg)
    fed = federated_data(data_spec)
    model = build_quantized_model(model_spec, fed.data)
    layers = list(quant_layers(model))
    assert [layer.pinned for layer in layers] == [True] + [False] * (len(layers) - 2) + [True]
    set_bitwidth(model, 2, 2)
    assert layers[0].weight_quantizer.bits == 8 and layers[0].input_quantizer.bits == 8  # the input image
    assert layers[-1].weight_quantizer.bits == 8 and layers[1].weight_quantizer.bits == 2
    described = server_evaluator(cfg, fed).describe()
    assert described["first_last_bits"] == 8
    assert described["calibration_samples"] == 256 and described["validation_samples"] == 128
    strict = make_config("quantization.pin_first_last=false")
    fed2 = federated_data(experiment_specs(strict)[0])
    assert server_evaluator(strict, fed2).describe()["first_last_bits"] is None


@pytest.mark.parametrize("name", ["fmnist_qafedavg", "fmnist_fedavg", "cifar_qafedavg", "cifar_fedavg"])
def test_shipped_experiments_pin_first_and_last_layer(name):
    assert make_config(f"+experiment={name}")["quantization"]["pin_first_last"] is True


def test_calibration_and_validation_are_disjoint_from_each_other_and_from_clients():
    fed = federated_data(experiment_specs(make_config())[0])
    cal, val = set(fed.calibration.tolist()), set(fed.validation.tolist())
    clients = set(torch.cat(fed.clients).tolist())
    assert len(cal) == 256 and len(val) == 128
    assert not cal & val and not (cal | val) & clients
    assert len(cal | val | clients) == len(fed.data.train_y)
    again = federated_data(experiment_specs(make_config("seed=1"))[0])
    assert set(again.validation.tolist()) != val  # seeded


def _bn_model() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 10))
    model[1].running_mean.fill_(3.0)  # trained statistics far from the data's
    return quantize_model(model, QuantConfig(None, None)), torch.randn(64, 1, 8, 8)


class _Images:
    """A Dataset-like object over float images (normalize is the identity)."""

    def __init__(self, x: torch.Tensor) -> None:
        self.train_x, self.test_x = x, x
        self.train_y = self.test_y = torch.arange(len(x)) % 10

    @staticmethod
    def normalize(x: torch.Tensor) -> torch.Tensor:
        return x


@pytest.mark.parametrize("reestimate", [True, False])
def test_one_batchnorm_rule_for_every_setting_fp_included(reestimate):
    model, x = _bn_model()
    data = _Images(x)
    state = float_state(model)
    ev = Evaluator(copy.deepcopy(model), data, torch.arange(32), torch.arange(32, 64), [(None, None), (8, 8)],
                   EvalProtocol(reestimate_bn=reestimate))
    result = ev(state)
    ref = copy.deepcopy(model)
    load_float_state(ref, state)
    if reestimate:
        reestimate_batchnorm(ref, [x[:32]])
    expected_fp = accuracy(ref, data, x, data.test_y)[1]
    assert result["test"]["fp"]["loss"] == pytest.approx(expected_fp, rel=1e-6)
    set_bitwidth(ref, 8, 8)
    calibrate(ref, [x[:32]], reestimate_bn=reestimate)
    quantize_biases(ref, batchnorm_after(ref))  # the deployed int32 biases (eval.integer_bias, on by default)
    assert result["test"]["w8a8"]["loss"] == pytest.approx(accuracy(ref, data, x, data.test_y)[1], rel=1e-6)
    assert set(result["validation"]) == {"fp", "w8a8"}
    assert ("re-estimated" in ev.describe()["batchnorm"]) == reestimate


def test_weight_and_activation_ranges_are_separate_options():
    torch.manual_seed(3)
    model = quantize_model(nn.Sequential(nn.Linear(16, 8)), QuantConfig(4, 4))
    x = torch.distributions.Laplace(0.0, 1.0).sample((256, 16))
    calibrate(model, [x], act_range="minmax", weight_range="mse")
    layer = model[0]
    assert (layer.weight_quantizer.clip < 1).any()  # MSE weight clip ...
    assert layer.input_quantizer.min_val.item() == x.min().item()  # ... min-max activations
    calibrate(model, [x], act_range="percentile", weight_range="max", percentile=99.0)
    assert (layer.weight_quantizer.clip == 1).all()
    flat = x.reshape(-1)[:: max(1, x.numel() // 4096)].numpy()
    lo, hi = np.percentile(flat, [1.0, 99.0])
    assert layer.input_quantizer.min_val.item() == pytest.approx(lo, rel=1e-5)
    assert layer.input_quantizer.max_val.item() == pytest.approx(hi, rel=1e-5)


def test_model_bytes_counts_scales_and_zero_points():
    model = quantize_model(nn.Sequential(nn.Linear(10, 6), nn.ReLU(), nn.Linear(6, 3)), QuantConfig(None, None))
    params = 10 * 6 + 6 + 6 * 3 + 3
    assert model_bytes(model, (None, None)) == 4 * params
    # W4A4: weights 78 x 4 bits, biases 9 x 32 bits; per weight channel (6 + 3) a float32 scale and a
    # 1-byte zero-point; per activation tensor (2) a float32 scale and a 1-byte zero-point
    expected = (78 * 4 + 9 * 32) / 8 + (6 + 3) * 5 + 2 * 5
    assert model_bytes(model, (4, 4)) == expected
    assert model_bytes(model, (12, 12)) == (78 * 12 + 9 * 32) / 8 + (6 + 3) * 6 + 2 * 6  # 2-byte zero-points


def test_adaround_and_bias_correction_are_separate_protocol_choices():
    """ptq=adaround learns the rounding; bias correction is its own switch (chosen on validation)."""
    torch.manual_seed(0)
    model = quantize_model(nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 10)),
                           QuantConfig(None, None))
    x = torch.randn(96, 1, 4, 4)
    data = _Images(x)
    state = float_state(model)
    results = {}
    for ptq, bc in (("basic", False), ("basic", True), ("adaround", False)):
        ev = Evaluator(copy.deepcopy(model), data, torch.arange(64), torch.arange(64, 96), [(2, 8)],
                       EvalProtocol(ptq=ptq, bias_correction=bc, adaround_iterations=50))
        results[(ptq, bc)] = ev(state)["test"]["w2a8"]["loss"]
        assert ev.describe()["ptq"] == {("basic", False): "basic", ("basic", True): "basic + bias correction",
                                        ("adaround", False): "adaround (50 iterations per layer)"}[(ptq, bc)]
    assert len(set(results.values())) == 3  # each choice changes the deployed model
