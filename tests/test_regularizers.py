import torch
from torch import nn

from fedquant.quant import gradient_l1_loss, kurtosis, kurtosis_loss


def model_with(weights):
    model = nn.Linear(weights.shape[1], weights.shape[0], bias=False)
    model.weight.data.copy_(weights)
    return model


def test_kure_is_zero_for_uniform_and_large_for_heavy_tails():
    shape = (256, 256)
    uniform = kurtosis_loss(model_with(torch.rand(shape) * 2 - 1)).item()
    gauss = kurtosis_loss(model_with(torch.randn(shape))).item()
    laplace = kurtosis_loss(model_with(torch.distributions.Laplace(0.0, 1.0).sample(shape))).item()
    assert uniform < 1e-3
    assert abs(gauss - (3 - 1.8) ** 2) < 0.1  # Gaussian kurtosis 3
    assert abs(laplace - (6 - 1.8) ** 2) < 2.5  # Laplace kurtosis 6
    assert abs(kurtosis(torch.randn(100_000)).item() - 3.0) < 0.1


def test_kure_is_differentiable_and_lowers_kurtosis():
    model = model_with(torch.distributions.Laplace(0.0, 1.0).sample((64, 64)))
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    before = kurtosis_loss(model)
    for _ in range(50):
        opt.zero_grad()
        kurtosis_loss(model).backward()
        opt.step()
    assert kurtosis_loss(model).item() < 0.1 * before.item()


def test_gradient_l1_step_reduces_gradient_norm():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 32), nn.Tanh(), nn.Linear(32, 3))
    x, y = torch.randn(64, 10), torch.randint(0, 3, (64,))

    def grad_l1():
        return gradient_l1_loss(nn.functional.cross_entropy(model(x), y), model)

    before = grad_l1()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    opt.zero_grad()
    before.backward()
    opt.step()
    assert grad_l1().item() < before.item()
