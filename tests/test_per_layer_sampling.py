"""``strategy.sampling=per_layer``: before every local step each quantized layer draws its own
setting, independently and uniformly from the client's set (issue 29, item 4)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedquant.data import load_dataset
from fedquant.federation.bitwidths import LayerSampler, parse_settings, setting_source
from fedquant.learning.local_training import TrainConfig, train_local
from fedquant.models import build_model
from fedquant.quant import LayerBits, QuantConfig, quant_layers, quantize_model, set_layer_bits
from fedquant.streams import Stream, stream_rng
from tests.helpers import TINY, make_config
from tests.test_strategies import run_inprocess, setup_and_plan

B = parse_settings([2, 4, 8], "bits")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_each_layer_draws_uniformly_and_independently_of_the_others():
    sampler = LayerSampler(B, stream_rng(0, Stream.STEP_SETTING), layers=3)
    draws = [sampler() for _ in range(6000)]
    codes = np.array([[B.index(s) for s in d] for d in draws])  # 6000 x 3, values 0..2
    for layer in range(3):  # marginals: 1/3 each, within 5 binomial sd (sd = sqrt(6000 * 1/3 * 2/3) = 36.5)
        assert np.all(np.abs(np.bincount(codes[:, layer], minlength=3) - 2000) < 5 * 36.5)
    joint = np.bincount(codes[:, 0] * 3 + codes[:, 1], minlength=9)  # pairs: 1/9 each if independent
    assert np.all(np.abs(joint - 6000 / 9) < 5 * np.sqrt(6000 / 9 * 8 / 9))
    assert len({tuple(d) for d in draws}) == 27  # every assignment occurs
    again = LayerSampler(B, stream_rng(0, Stream.STEP_SETTING), layers=3)
    assert [again() for _ in range(50)] == draws[:50]  # seeded: the same draws anywhere


def test_per_step_draws_are_what_they_were():
    """per_layer has its own sampler: per_step still draws one setting from the same stream."""
    per_step = setting_source("per_step", B, seed=5)
    rng = stream_rng(5, Stream.STEP_SETTING)
    assert [per_step() for _ in range(20)] == [B[int(rng.integers(3))] for _ in range(20)]


def test_training_runs_every_layer_at_its_own_draw_and_pinned_layers_at_their_bits(digits):
    model = quantize_model(build_model("mlp", digits), QuantConfig(8, 8, pin_first_last=True, pinned_bits=8))
    layers = list(quant_layers(model))
    seen: list[list[tuple]] = []

    def record(layer, _inputs):  # the bits each layer runs at, in every forward of training
        if layer is layers[0]:
            seen.append([])
        seen[-1].append((layer.weight_quantizer.bits, layer.input_quantizer.bits))

    for layer in layers:
        layer.register_forward_pre_hook(record)
    idx = torch.arange(200)
    cfg = TrainConfig(epochs=1, batch_size=32, lr=0.05)
    result = train_local(model, digits, idx, cfg, setting_source("per_layer", B, 7, layers=len(layers)), seed=7)
    replay = LayerSampler(B, stream_rng(7, Stream.STEP_SETTING), layers=len(layers))
    expected = [[(8, 8) if layer.pinned else s for layer, s in zip(layers, replay(), strict=True)]
                for _ in range(result.steps)]
    assert result.steps == 7 and seen == expected
    middle = {tuple(step[1:-1]) for step in seen}
    assert len(middle) > 1  # the unpinned layers really vary
    free = sum(not layer.pinned for layer in layers)
    assert free == 1 and sum(result.bits_used.values()) == result.steps * free  # the unpinned layers' draws


def test_set_layer_bits_needs_one_setting_per_layer(digits):
    model = quantize_model(build_model("mlp", digits), QuantConfig(8, 8))
    n = sum(1 for _ in quant_layers(model))
    set_layer_bits(model, LayerBits([(4, 4)] * n))
    assert {layer.weight_quantizer.bits for layer in quant_layers(model)} == {4}
    try:
        set_layer_bits(model, [(4, 4)] * (n + 1))
    except ValueError as err:
        assert str(err) == f"{n + 1} per-layer settings for a model with {n} quantized layers: allowed is one " \
                           "setting per quantized layer"
    else:
        raise AssertionError("a wrong number of settings was accepted")


def test_a_federated_round_trains_per_layer_and_counts_layer_steps():
    overrides = ("strategy=qafedavg", "strategy.sampling=per_layer", "strategy.bits=[2,4,8]", "num_rounds=1",
                 "quantization.pin_first_last=false")
    _, strategy, _ = run_inprocess(*overrides)
    cfg = make_config(*TINY, *overrides)
    assert setup_and_plan(cfg)[1].assignment(1, 0)[0] == "per_layer"
    clients = strategy.reports[1].clients
    assert clients and all(set(c.bits_used) <= {"w2a2", "w4a4", "w8a8"} for c in clients)
    steps = [cfg["client"]["local_epochs"] * math.ceil(c.num_examples / cfg["client"]["batch_size"]) for c in clients]
    assert [sum(c.bits_used.values()) for c in clients] == [3 * n for n in steps]  # 3 layers, each its own draw
