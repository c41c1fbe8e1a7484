import pytest
import torch

from fedquant.models import build_model
from fedquant.quant import QuantConfig, quantize_model


def spec(c, h, classes):
    return type("Spec", (), {"image_shape": (c, h, h), "num_classes": classes})()


DATASETS = {"digits": spec(1, 8, 10), "fmnist": spec(1, 28, 10), "cifar10": spec(3, 32, 10), "cifar100": spec(3, 32, 100)}
CASES = [("mlp", "digits"), ("cnn", "fmnist"), ("resnet20", "cifar10"), ("resnet20", "cifar100")]


@pytest.mark.parametrize("model_name, dataset", CASES)
def test_output_shape_and_w4a4_forward_backward(model_name, dataset):
    d = DATASETS[dataset]
    model = quantize_model(build_model(model_name, d), QuantConfig(4, 4)).train()
    x = torch.randn(4, *d.image_shape)
    out = model(x)
    assert out.shape == (4, d.num_classes)
    out.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_resnet20_parameter_count():
    n = sum(p.numel() for p in build_model("resnet20", DATASETS["cifar10"]).parameters())
    assert n == 269_722  # 0.27M (He et al. 2016, Table 6; option-A shortcuts, BN affine included)
    gn = build_model("resnet20", DATASETS["cifar10"], norm="group")
    assert sum(p.numel() for p in gn.parameters()) == n
    assert sum(isinstance(m, torch.nn.Conv2d) for m in gn.modules()) == 19


def test_unknown_model_lists_allowed():
    with pytest.raises(ValueError, match="model.name='vgg' is not valid: allowed are mlp, cnn, resnet20"):
        build_model("vgg", DATASETS["digits"])
