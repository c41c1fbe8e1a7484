"""HeteroFL width heterogeneity: sub-model shapes, extraction, overlap averaging, the Scaler."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fedquant.models import build_model, model_options
from fedquant.models.width import (
    Scaler,
    extract,
    overlap_average,
    overlap_fill,
    scaled,
    sub_width,
)
from fedquant.quant import QuantConfig, quantize_model
from fedquant.quant.modules import quant_layers


def spec(c, h, classes=10):
    return type("Spec", (), {"image_shape": (c, h, h), "num_classes": classes})()


DIGITS, FMNIST, CIFAR = spec(1, 8), spec(1, 28), spec(3, 32)


# --- today's models, verbatim (before ``width``): width=1 must build exactly these -------------

class RefMLP(nn.Sequential):
    def __init__(self, in_features, num_classes, hidden=(128, 64)):
        layers = [nn.Flatten()]
        for width in hidden:
            layers += [nn.Linear(in_features, width), nn.ReLU()]
            in_features = width
        layers.append(nn.Linear(in_features, num_classes))
        super().__init__(*layers)


def _ref_cbr(cin, cout):
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


class RefCNN(nn.Sequential):
    def __init__(self, in_channels, num_classes, image_size=28):
        side = image_size // 4
        super().__init__(*_ref_cbr(in_channels, 32), nn.MaxPool2d(2), *_ref_cbr(32, 64), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(64 * side * side, 128), nn.ReLU(), nn.Linear(128, num_classes))


def _ref_norm(kind, c):
    return nn.BatchNorm2d(c) if kind == "batch" else nn.GroupNorm(8, c)


class RefBlock(nn.Module):
    def __init__(self, cin, cout, stride, norm):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = _ref_norm(norm, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = _ref_norm(norm, cout)
        self.pad, self.stride = cout - cin, stride

    def forward(self, x):
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        if self.stride != 1 or self.pad:
            x = F.pad(x[:, :, ::self.stride, ::self.stride], (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return F.relu(out + x)


class RefResNet20(nn.Module):
    def __init__(self, in_channels, num_classes, norm="batch"):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn = _ref_norm(norm, 16)
        blocks, cin = [], 16
        for cout, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(3):
                blocks.append(RefBlock(cin, cout, stride if i == 0 else 1, norm))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.blocks(F.relu(self.bn(self.conv(x)))), 1), 1))


TODAY = [("mlp", DIGITS, {}, lambda: RefMLP(64, 10)),
         ("mlp", DIGITS, {"hidden": (7, 5)}, lambda: RefMLP(64, 10, (7, 5))),
         ("cnn", FMNIST, {}, lambda: RefCNN(1, 10)),
         ("resnet20", CIFAR, {}, lambda: RefResNet20(3, 10)),
         ("resnet20", CIFAR, {"norm": "group"}, lambda: RefResNet20(3, 10, "group"))]


@pytest.mark.parametrize("name, data, options, reference", TODAY)
def test_width_one_builds_todays_model(name, data, options, reference):
    torch.manual_seed(3)
    ref = reference()
    torch.manual_seed(3)
    model = build_model(name, data, width=1.0, **options)
    layers = [[(n, type(m)) for n, m in net.named_modules() if type(m).__module__.startswith("torch.")]
              for net in (model, ref)]
    assert layers[0] == layers[1]  # same torch.nn modules (no Scaler) at the same names
    ref_state, state = ref.state_dict(), model.state_dict()
    assert list(state) == list(ref_state)
    assert all(torch.equal(state[k], ref_state[k]) for k in state)  # same shapes and same init
    x = torch.randn(4, *data.image_shape)
    for mode in (True, False):
        assert torch.equal(model.train(mode)(x), ref.train(mode)(x))


def test_sub_width_rounds_float_error_away():
    assert [sub_width(10, w) for w in (0.3, 0.7, 0.1)] == [3, 7, 1]  # 0.3 * 10 = 3.0000000000000004
    assert [sub_width(32, 0.25), sub_width(32, 0.26), sub_width(16, 0.3), sub_width(64, 1.0)] == [8, 9, 5, 64]


def shapes(model):
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("width, c1, c2, hidden", [(0.5, 16, 32, 64), (0.25, 8, 16, 32)])
def test_cnn_sub_model_shapes(width, c1, c2, hidden):
    sub = shapes(build_model("cnn", FMNIST, width=width))
    assert sub.keys() == shapes(build_model("cnn", FMNIST)).keys()
    assert sub["0.weight"] == (c1, 1, 3, 3)  # input channels stay full
    assert sub["1.weight"] == sub["1.running_var"] == (c1,)
    assert sub["4.weight"] == (c2, c1, 3, 3)
    assert sub["9.weight"] == (hidden, c2 * 7 * 7)  # at 0.25: 128 -> 32 units, 16 * 7 * 7 inputs
    assert sub["11.weight"] == (10, hidden) and sub["11.bias"] == (10,)  # classes stay full


def test_resnet20_sub_model_shapes():
    sub = shapes(build_model("resnet20", spec(3, 32, 100), width=0.5))
    assert sub.keys() == shapes(build_model("resnet20", spec(3, 32, 100))).keys()
    assert sub["conv.weight"] == (8, 3, 3, 3)
    assert sub["blocks.0.conv1.weight"] == sub["blocks.2.conv2.weight"] == (8, 8, 3, 3)
    assert sub["blocks.3.conv1.weight"] == (16, 8, 3, 3)  # stride-2 block: 16 -> 32 channels
    assert sub["blocks.6.conv1.weight"] == (32, 16, 3, 3) and sub["blocks.8.bn2.bias"] == (32,)
    assert sub["fc.weight"] == (100, 32)


def test_resnet20_shortcut_keeps_the_global_channel_placement():
    # The global 16 -> 32 block puts input channel i on output channel 8 + i.
    blocks = [build_model("resnet20", CIFAR, width=w).blocks[3] for w in (1.0, 0.5, 0.3, 0.25)]
    x = [torch.arange(1.0, 17.0)[:b.conv1.in_channels].reshape(1, -1, 1, 1) for b in blocks]
    out = [b.shortcut(xi).flatten().tolist() for b, xi in zip(blocks, x, strict=True)]
    assert out[0] == [0.0] * 8 + list(range(1, 17)) + [0.0] * 8
    assert out[1] == [0.0] * 8 + list(range(1, 9))  # 8 of 16 inputs, 16 of 32 outputs
    assert out[2] == [0.0] * 8 + [1.0, 2.0]  # 5 inputs, 10 outputs: inputs 2..4 land beyond
    assert out[3] == [0.0] * 8  # 4 inputs, 8 outputs: every input lands beyond


def test_build_model_width_errors_and_options():
    with pytest.raises(ValueError, match=r"^model.name=cct does not support width < 1 \(HeteroFL sub-models\): "):
        build_model("cct", CIFAR, width=0.5)
    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match="is not valid: allowed is 0 < width <= 1"):
            build_model("cnn", FMNIST, width=bad)
    with pytest.raises(ValueError, match="5 of 16 channels is not a whole number of groups of 2"):
        build_model("resnet20", CIFAR, width=0.3, norm="group")
    assert all("width" not in model_options(n) for n in ("mlp", "cnn", "resnet20", "cct"))
    assert len(list(build_model("cct", CIFAR, width=1.0).parameters())) > 0


def test_scaler_divides_by_rate_in_training_only():
    x = torch.randn(3, 4)
    assert torch.equal(Scaler(0.25).train()(x), x * 4)
    assert Scaler(0.25).eval()(x) is x and Scaler(1.0).train()(x) is x
    relu = nn.ReLU()
    assert scaled(relu, 1.0) is relu and type(relu) is nn.ReLU
    bn = scaled(nn.BatchNorm2d(3), 0.5)
    assert isinstance(bn, nn.BatchNorm2d) and list(bn.state_dict()) == list(nn.BatchNorm2d(3).state_dict())
    # The hidden layer's output is scaled before its ReLU: train logits - b = (eval logits - b) / r.
    mlp = build_model("mlp", DIGITS, width=0.5, hidden=(6,))
    x = torch.randn(5, 1, 8, 8)
    bias = mlp[-1].bias
    assert torch.allclose(mlp.train()(x) - bias, (mlp.eval()(x) - bias) / 0.5, atol=1e-6)


def test_quantize_model_skips_the_scaler_and_keeps_keys():
    config = QuantConfig(4, 4, pin_first_last=True)
    glob = quantize_model(build_model("cnn", FMNIST), config)
    sub = quantize_model(build_model("cnn", FMNIST, width=0.5), config)
    assert len(list(quant_layers(sub))) == len(list(quant_layers(glob))) == 4
    assert [m.pinned for m in quant_layers(sub)] == [True, False, False, True]
    sub.load_state_dict(extract(glob.state_dict(), sub.state_dict()))  # strict: same keys, fitting shapes


def test_extract_cuts_the_leading_block():
    glob = {"w": torch.arange(12.0).reshape(3, 4), "n": torch.tensor(7)}
    sub = extract(glob, {"w": torch.zeros(2, 3), "n": torch.tensor(0)})
    assert sub["w"].tolist() == [[0.0, 1.0, 2.0], [4.0, 5.0, 6.0]] and sub["n"].item() == 7
    sub["w"] += 1
    assert glob["w"][0, 0] == 0  # a copy
    with pytest.raises(ValueError, match="'v' of the sub-model is missing from the global state"):
        extract(glob, {"v": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"'w': sub-model shape \(2, 5\) does not fit in the global shape \(3, 4\)"):
        extract(glob, {"w": torch.zeros(2, 5)})


# --- aggregation ------------------------------------------------------------------------------

def tiny_replies(widths_weights, offsets):
    """Replies of MLP(1 -> 4 -> 2) sub-models: entry values ``offset + 0, 1, 2, ...`` per tensor."""
    replies = []
    for (width, weight), offset in zip(widths_weights, offsets, strict=True):
        template = build_model("mlp", spec(1, 1, 2), width=width, hidden=(4,)).state_dict()
        replies.append(({k: offset + torch.arange(float(v.numel())).reshape(v.shape) for k, v in template.items()},
                        weight))
    return replies


def tiny_global():
    return {k: torch.full_like(v, 100.0) for k, v in build_model("mlp", spec(1, 1, 2), hidden=(4,)).state_dict().items()}


def test_overlap_average_by_hand_two_widths():
    # Client A: width 1 (4 units), weight 3, values 0, 1, 2, ...; client B: width 0.5 (2 units),
    # weight 1, values 10, 11, ... Held by both: (3 a + b) / 4; held by A only: a.
    # Shapes: 1.weight (4, 1), 1.bias (4,), 3.weight (2, 4), 3.bias (2,).
    avg = overlap_average(tiny_global(), tiny_replies([(1.0, 3.0), (0.5, 1.0)], [0.0, 10.0]))
    assert avg["1.weight"].flatten().tolist() == [2.5, 3.5, 2.0, 3.0]  # (0+10)/4, (3+11)/4, A, A
    assert avg["1.bias"].tolist() == [2.5, 3.5, 2.0, 3.0]
    # 3.weight: A = [[0,1,2,3],[4,5,6,7]], B = [[10,11],[12,13]]
    assert avg["3.weight"].tolist() == [[2.5, 3.5, 2.0, 3.0], [6.0, 7.0, 6.0, 7.0]]
    assert avg["3.bias"].tolist() == [2.5, 3.5]  # classes: held by both


def test_overlap_average_by_hand_entries_held_by_nobody():
    # Client B: width 0.5 (2 units), weight 1, values 10, 11, ...; client C: width 0.25 (1 unit),
    # weight 3, values 0, 1, ... Units 2 and 3 are held by nobody: the global 100 stays.
    avg = overlap_average(tiny_global(), tiny_replies([(0.5, 1.0), (0.25, 3.0)], [10.0, 0.0]))
    assert avg["1.weight"].flatten().tolist() == [2.5, 11.0, 100.0, 100.0]  # (10 + 3*0)/4, B, -, -
    assert avg["1.bias"].tolist() == [2.5, 11.0, 100.0, 100.0]
    # 3.weight: B = [[10,11],[12,13]], C = [[0],[1]]
    assert avg["3.weight"].tolist() == [[2.5, 11.0, 100.0, 100.0], [3.75, 13.0, 100.0, 100.0]]
    assert avg["3.bias"].tolist() == [2.5, 3.5]  # (10 + 0)/4, (11 + 3)/4


def random_state(model, count=5):
    return {k: torch.randn_like(v) if v.is_floating_point() else v + count for k, v in model.state_dict().items()}


def loop_average(glob, replies):
    """m_e by an explicit loop over entries (the reference for overlap_average)."""
    out = {}
    for key, g in glob.items():
        out[key] = g.clone()
        if not g.is_floating_point():
            continue
        for idx in torch.cartesian_prod(*[torch.arange(n) for n in g.shape]).reshape(-1, g.dim()).tolist():
            held = [(s[key][tuple(idx)].item(), w) for s, w in replies
                    if w > 0 and all(i < n for i, n in zip(idx, s[key].shape, strict=True))]
            if held:
                out[key][tuple(idx)] = sum(v * w for v, w in held) / sum(w for _, w in held)
    return out


@pytest.mark.parametrize("widths_weights", [[(1.0, 3.0), (0.5, 1.0), (0.25, 2.0)], [(0.5, 1.0), (0.25, 2.0)],
                                            [(0.5, 2.0), (0.5, 5.0), (1.0, 0.0)]])
def test_overlap_fill_then_plain_mean_is_the_overlap_average(widths_weights):
    data = spec(1, 8)  # CNN on 8x8: side 2, fc1 has 64 * 4 inputs
    glob = random_state(build_model("cnn", data))
    replies = [(random_state(build_model("cnn", data, width=w), count=9), wt) for w, wt in widths_weights]
    expected = overlap_average(glob, replies)
    small = {k: v for k, v in glob.items() if v.numel() <= 4096}  # the loop is slow on fc1
    reference = loop_average(small, [({k: s[k] for k in small}, w) for s, w in replies])
    for key in small:
        assert torch.allclose(expected[key], reference[key], atol=1e-6), key
    filled = overlap_fill(glob, replies)
    total = sum(w for _, w in replies)
    for key, g in glob.items():
        if not g.is_floating_point():
            assert torch.equal(expected[key], g)  # counters are not averaged
            continue
        mean = sum(w * f[key] for f, (_, w) in zip(filled, replies, strict=True)) / total
        assert torch.allclose(mean, expected[key], atol=1e-6), key
        for f, (state, _) in zip(filled, replies, strict=True):
            assert f[key].shape == g.shape
            assert torch.equal(f[key][tuple(slice(0, n) for n in state[key].shape)], state[key])
    if all(w < 1 for w, _ in widths_weights):
        assert torch.equal(expected["0.weight"][16:], glob["0.weight"][16:])  # held by nobody


# --- the sub-model is the global model restricted to its channels -------------------------------

def masked(state, sub_state):
    """``state`` with every float entry zeroed outside the sub-model's leading block."""
    out = {}
    for key, value in state.items():
        keep = torch.zeros_like(value)
        keep[tuple(slice(0, n) for n in sub_state[key].shape)] = 1
        out[key] = value * keep if value.is_floating_point() else value
    return out


@pytest.mark.parametrize("name, data, width, options", [
    ("mlp", DIGITS, 0.5, {}), ("cnn", FMNIST, 0.5, {}), ("cnn", FMNIST, 0.25, {}),
    ("resnet20", CIFAR, 0.5, {}), ("resnet20", CIFAR, 0.3, {}), ("resnet20", CIFAR, 0.25, {}),
    ("resnet20", CIFAR, 0.5, {"norm": "group"})])
def test_extracted_sub_model_equals_masked_global_model(name, data, width, options):
    glob = build_model(name, data, **options)
    state = {k: (torch.rand_like(v) + 0.5 if k.endswith("running_var") else torch.randn_like(v) * 0.5)
             if v.is_floating_point() else v for k, v in glob.state_dict().items()}
    sub = build_model(name, data, width=width, **options)
    sub.load_state_dict(extract(state, sub.state_dict()))
    x = torch.randn(3, *data.image_shape)
    glob.load_state_dict(masked(state, sub.state_dict()))
    expected = glob.eval()(x)
    glob.load_state_dict(state)
    assert not torch.allclose(glob(x), expected, atol=1e-3)  # the dropped channels matter
    assert torch.allclose(sub.eval()(x), expected, atol=1e-5)
