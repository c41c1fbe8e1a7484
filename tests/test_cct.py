"""CCT (model.name=cct): shapes per input size, full quantization coverage, exact float
pass-through, channels_last inputs, seeded construction and QAT on digits."""

import copy

import pytest
import torch
from torch import nn

from fedquant.data import load_dataset
from fedquant.learning.batches import memory_format_for
from fedquant.learning.evaluation import Evaluator
from fedquant.learning.local_training import TrainConfig, train_local
from fedquant.models import build_model
from fedquant.models.cct import CCT, Attention
from fedquant.quant import (
    QuantConfig,
    QuantConv2d,
    QuantLinear,
    quant_layers,
    quantize_model,
    set_bitwidth,
)


def spec(c, h, classes=10):
    return type("Spec", (), {"image_shape": (c, h, h), "num_classes": classes})()


# input shape -> (tokens, parameters) of the default CCT with 10 classes
SHAPES = {"fmnist": ((1, 28), 49, 280_651), "cifar10": ((3, 32), 64, 283_723),
          "digits": ((1, 8), 16, 203_275)}


def built(dataset, quant=None, **options):
    (c, h), _, _ = SHAPES[dataset]
    torch.manual_seed(0)
    model = build_model("cct", spec(c, h), **options)
    return model if quant is None else quantize_model(model, quant)


@pytest.mark.parametrize("dataset", SHAPES)
@pytest.mark.parametrize("batch", [1, 5])
def test_output_shape_tokens_and_parameter_count(dataset, batch):
    (c, h), tokens, params = SHAPES[dataset]
    model = built(dataset)
    assert model.tokens == tokens
    assert model(torch.randn(batch, c, h, h)).shape == (batch, 10)
    n = sum(p.numel() for p in model.parameters())
    assert n == params and n < 500_000, f"CCT for {c}x{h}x{h}: {n:,} parameters"


def test_cifar100_head_and_options():
    model = build_model("cct", spec(3, 32, 100), depth=1, heads=4, mlp_ratio=2.0,
                        tokenizer_layers=3)
    assert model.tokens == 16 and model(torch.randn(2, 3, 32, 32)).shape == (2, 100)
    assert model.blocks[0].fc1.out_features == 256 and model.blocks[0].attn.heads == 4
    with pytest.raises(ValueError, match="model.positional='rope' is not valid"):
        build_model("cct", spec(1, 8), positional="rope")
    with pytest.raises(ValueError, match="model.embed_dim=128 is not valid with model.heads=3"):
        build_model("cct", spec(1, 8), heads=3)
    with pytest.raises(ValueError, match="model.tokenizer_layers=0 is not valid"):
        build_model("cct", spec(1, 8), tokenizer_layers=0)
    with pytest.raises(RuntimeError, match="size of tensor a \\(64\\) must match .* \\(16\\)"):
        build_model("cct", spec(1, 8))(torch.randn(1, 1, 16, 16))


@pytest.mark.parametrize("positional", ["learnable", "sine"])
def test_every_weight_matrix_is_quantized(positional):
    model = built("cifar10", QuantConfig(4, 4), positional=positional)
    plain = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    assert plain and all(isinstance(m, (QuantLinear, QuantConv2d)) for m in plain)
    assert not any(isinstance(m, nn.MultiheadAttention) for m in model.modules())
    quantized = {id(m.weight) for m in quant_layers(model)}
    escaped = [name for name, p in model.named_parameters()
               if p.dim() >= 2 and id(p) not in quantized and name != "pos_embed"]
    assert not escaped, f"weight matrices outside any quantized layer: {escaped}"
    kinds = {type(m).__name__ for name, m in model.named_modules() if "." not in name and name}
    assert kinds == {"Tokenizer", "Sequential", "LayerNorm", "QuantLinear"}
    # 2 tokenizer convs + 2 layers x (qkv, proj, fc1, fc2) + pool + classifier
    assert sum(1 for _ in quant_layers(model)) == 12
    assert ("pos_embed" in dict(model.named_parameters())) == (positional == "learnable")
    assert "pos_embed" not in model.state_dict() or positional == "learnable"


def test_pinned_layers_are_the_first_conv_and_the_classifier():
    model = built("fmnist", QuantConfig(4, 4, pin_first_last=True))
    pinned = [m for m in quant_layers(model) if m.pinned]
    assert pinned == [model.tokenizer.blocks[0], model.fc]


@pytest.mark.parametrize("dataset", SHAPES)
def test_float_pass_through_is_bit_identical(dataset):
    (c, h), _, _ = SHAPES[dataset]
    fp = built(dataset)
    model = quantize_model(copy.deepcopy(fp), QuantConfig(4, 4))
    x = torch.randn(6, c, h, h)
    model.train()(x)  # a quantized training pass first: tracked ranges must not leak into float
    set_bitwidth(model, None, None)
    for mode in (True, False):
        assert torch.equal(model.train(mode)(x), fp.train(mode)(x))


def test_seeded_construction_is_deterministic():
    a, b = built("cifar10").state_dict(), built("cifar10").state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("dataset", ["fmnist", "digits"])
def test_channels_last_inputs(dataset):
    (c, h), _, _ = SHAPES[dataset]
    model = built(dataset, QuantConfig(None, None))
    assert memory_format_for(model) == torch.channels_last
    x = torch.randn(4, c, h, h)
    xl = x.contiguous(memory_format=torch.channels_last)
    ref = model(x)
    model.to(memory_format=torch.channels_last)
    torch.testing.assert_close(model(xl), ref, rtol=1e-5, atol=1e-5)
    set_bitwidth(model, 4, 4)
    model.train()
    out = model(xl)
    assert out.shape == (4, 10)
    out.square().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_attention_matches_softmax_attention_reference():
    torch.manual_seed(0)
    attn = Attention(8, 2)
    x = torch.randn(3, 5, 8)
    q, k, v = attn.qkv(x).chunk(3, dim=-1)
    heads = [torch.softmax(q[..., h] @ k[..., h].transpose(1, 2) / 2.0, -1) @ v[..., h]
             for h in (slice(0, 4), slice(4, 8))]
    torch.testing.assert_close(attn(x), attn.proj(torch.cat(heads, -1)))


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_qat_w4a4_sgd_reduces_loss_on_digits(digits):
    torch.manual_seed(0)
    model = quantize_model(CCT(1, 10, image_size=8), QuantConfig(4, 4))
    idx = torch.arange(512)
    cfg = TrainConfig(epochs=1, batch_size=32, lr=0.05)
    first = train_local(model, digits, idx, cfg, lambda: (4, 4), seed=0)
    later = train_local(model, digits, idx, TrainConfig(epochs=2, batch_size=32, lr=0.05),
                        lambda: (4, 4), seed=1)
    assert first.steps == 16 and later.steps == 32
    measured = f"W4A4 QAT loss: epoch 1 {first.loss:.3f}, epochs 2-3 {later.loss:.3f}"
    assert later.loss < 0.8 * first.loss, measured


def test_evaluator_calibrates_and_tests_cct(digits):
    torch.manual_seed(0)
    model = quantize_model(CCT(1, 10, image_size=8), QuantConfig(None, None))
    idx = torch.arange(len(digits.train_y))
    evaluator = Evaluator(model, digits, calibration=idx[:64], validation=idx[64:128],
                          settings=[(None, None), (8, 8), (4, 4)])
    out = evaluator({k: v.clone() for k, v in model.state_dict().items()})
    assert set(out["test"]) == {"fp", "w8a8", "w4a4"}
    assert all(0.0 <= r["accuracy"] <= 1.0 for part in out.values() for r in part.values())
    layer = model.blocks[0].attn.qkv.input_quantizer
    assert layer.max_val > layer.min_val  # calibrated on the LayerNorm output


def test_config_selects_cct():
    from fedquant.app import check_config
    from tests.helpers import make_config

    cfg = make_config("model=cct", "dataset=digits")
    assert cfg["model"] == {"name": "cct", "options": {}}
    check_config(cfg)
