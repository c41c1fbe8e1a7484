"""In-place distillation: quantized steps also learn from the same model's float logits."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from fedquant.data import load_dataset
from fedquant.learning.local_training import (
    TrainConfig,
    distillation_loss,
    float_logits,
    train_local,
)
from fedquant.models import build_model
from fedquant.quant import QuantConfig, get_bitwidth, quantize_model


def test_distillation_loss_is_the_tempered_kl():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    for temp in (1.0, 2.0, 4.0):
        p = np.exp(t.numpy() / temp) / np.exp(t.numpy() / temp).sum(1, keepdims=True)
        q = np.exp(s.numpy() / temp) / np.exp(s.numpy() / temp).sum(1, keepdims=True)
        expected = temp**2 * (p * (np.log(p) - np.log(q))).sum(1).mean()
        assert distillation_loss(s, t, temp).item() == pytest.approx(expected, rel=1e-5)
    assert distillation_loss(t, t, 2.0).item() == pytest.approx(0.0, abs=1e-6)


def test_the_float_teacher_leaves_batchnorm_and_the_setting_as_they_were():
    torch.manual_seed(0)
    model = quantize_model(nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                                         nn.Linear(4 * 36, 3)), QuantConfig(2, 2)).train()
    x = torch.randn(8, 1, 8, 8)
    model(x)  # some running statistics
    before = {k: v.clone() for k, v in model.state_dict().items()}
    teacher = float_logits(model, x, (2, 2))
    assert get_bitwidth(model) == (2, 2) and not teacher.requires_grad
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    reference = copy.deepcopy(model)
    from fedquant.quant import set_bitwidth

    set_bitwidth(reference, None, None)
    assert torch.allclose(teacher, reference(x))


@pytest.mark.parametrize("arch", ["mlp", "cnn"])  # the CNN has BatchNorm
def test_distillation_changes_quantized_training_and_only_quantized_steps(arch):
    data = load_dataset("digits")
    idx = torch.arange(256)
    base = quantize_model(build_model(arch, data), QuantConfig(None, None))
    runs = {}
    for weight, setting in ((0.0, (2, 2)), (1.0, (2, 2)), (0.0, (None, None)), (1.0, (None, None))):
        model = copy.deepcopy(base)
        result = train_local(model, data, idx, TrainConfig(distill_weight=weight), lambda s=setting: s, seed=0)
        assert np.isfinite(result.loss)
        runs[weight, setting] = model.state_dict()
    differs = lambda a, b: any(not torch.equal(a[k], b[k]) for k in a)  # noqa: E731
    assert differs(runs[0.0, (2, 2)], runs[1.0, (2, 2)])
    assert not differs(runs[0.0, (None, None)], runs[1.0, (None, None)])  # float steps have no teacher
