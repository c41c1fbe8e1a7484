"""The exported files' names and how their logits differ from the simulation (fedquant.export).

Names: the encodings are keyed by tensor names of the written ONNX graph (AIMET's convention:
activation_encodings by the quantized tensor, param_encodings by the weight initializer), and an
nn.Sequential's index layers get their kind in front (``3`` -> ``fc3``).

Logits: a quantized file differs from the simulation only where float32 rounding puts a value on
the other side of a rounding boundary (a tie at float precision): such a code moves by one step,
the codes that depend on it move too, and the logits move by what the moved codes of the last
layer's input times its weights make (fedquant.export.check).
"""

from __future__ import annotations

import re
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import numpy_helper  # noqa: E402

from fedquant.export.builder import layer_names  # noqa: E402
from fedquant.export.check import Agreement, compare, session  # noqa: E402
from fedquant.export.onnx_export import Exported, export_model  # noqa: E402
from fedquant.export.run import CHECK_IMAGES, export_run  # noqa: E402
from fedquant.models import build_model  # noqa: E402
from fedquant.quant import QuantConfig, calibrate, quantize_model, set_bitwidth  # noqa: E402
from fedquant.quant.grids import host_asymmetric_qparams  # noqa: E402
from fedquant.runtime.checkpoint import save_checkpoint  # noqa: E402
from tests.helpers import make_config  # noqa: E402
from tests.test_export import evaluator_for, trained_state  # noqa: E402


class _Shape:
    def __init__(self, image_shape: tuple[int, ...]) -> None:
        self.image_shape, self.num_classes = image_shape, 10


SHAPES = {"mlp": (1, 8, 8), "cnn": (1, 28, 28), "resnet20": (3, 32, 32)}


def _calibrated(name: str, bits: tuple[int, int]) -> nn.Module:
    """A seeded quantized model at ``bits`` (first/last layers pinned), calibrated on noise."""
    torch.manual_seed(0)
    model = quantize_model(build_model(name, _Shape(SHAPES[name])), QuantConfig(
        weight_bits=None, act_bits=None, pin_first_last=True))
    set_bitwidth(model, *bits)
    calibrate(model, [torch.randn(16, *SHAPES[name])], reestimate_bn=True)
    return model.eval()


def _tensor_names(graph: onnx.GraphProto) -> set[str]:
    return {i.name for i in graph.input} | {t for n in graph.node for t in (*n.input, *n.output) if t}


# -- names -------------------------------------------------------------------------------------

def test_layer_names_spell_out_sequential_indices():
    nested = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Sequential(nn.Flatten(), nn.Linear(2, 2)))
    names = layer_names(nested)
    assert [names[k] for k in ("0", "1", "2", "3.0", "3.1")] == ["conv0", "bn1", "relu2", "3.flatten0", "3.fc1"]
    assert names["3"] == "3"  # a container is no layer of the graph: its name stays
    clash = nn.Sequential(OrderedDict([("0", nn.Linear(2, 2)), ("fc0", nn.Linear(2, 2))]))
    assert layer_names(clash) == {"": "", "0": "fc0_", "fc0": "fc0"}


@pytest.mark.parametrize("name", ["mlp", "cnn", "resnet20"])
def test_encodings_keys_are_tensor_names_of_the_written_onnx_graph(name):
    """param_encodings: the integer weight/bias initializers; activation_encodings: the tensor a
    QuantizeLinear (or its Clip) reads, consumed by layers whose weights are param keys; no key
    is a bare nn.Sequential index; ``modules`` leads back to the model's state_dict."""
    model = _calibrated(name, (4, 4))
    exported = export_model(model, SHAPES[name], "w4a4", integer_bias=True)
    graph = onnx.load_from_string(exported.to_bytes()).graph  # the bytes the export writes
    enc = exported.encodings
    inits = {t.name: t for t in graph.initializer}
    assert enc["param_encodings"] and set(enc["param_encodings"]) <= set(inits)
    assert all(inits[k].data_type in (onnx.TensorProto.INT4, onnx.TensorProto.INT8, onnx.TensorProto.INT32)
               for k in enc["param_encodings"])
    readers = {n.input[0] for n in graph.node if n.op_type in ("QuantizeLinear", "Clip")}
    assert enc["activation_encodings"] and set(enc["activation_encodings"]) <= readers <= _tensor_names(graph)
    state = model.state_dict()
    for tensor, a in enc["activation_encodings"].items():
        for layer in a["consumers"]:
            assert f"{layer}.weight" in enc["param_encodings"], (tensor, layer)
            assert f"{enc['modules'][layer]}.weight" in state
    keys = [*enc["param_encodings"], *enc["activation_encodings"], *enc["batchnorm"]]
    assert not [k for k in keys if re.match(r"\d", k)], keys  # a name, not an index, comes first
    if name != "resnet20":  # the Sequential models: no index anywhere (ResNet keeps blocks.0.conv1)
        assert not [k for k in keys if re.search(r"(^|\.)\d+(\.|$)", k)], keys


# -- where the logits differ -------------------------------------------------------------------

@pytest.fixture(scope="module")
def cnn_w8a8(tmp_path_factory):
    """The digits CNN after 40 float SGD steps (seed 0) deployed at W8A8 as the server does, and
    its run directory: on the check's 256 test images a few codes sit on rounding ties."""
    cfg = make_config("model=cnn", "num_rounds=3")
    state = trained_state(cfg, steps=40)
    run = tmp_path_factory.mktemp("cnn_run")
    save_checkpoint(run, 3, {"arrays": state, "config": cfg})
    evaluator = evaluator_for(cfg, ["w8a8"])
    model = evaluator.deploy(state, (8, 8))
    exported = export_model(model, evaluator.data.image_shape, "w8a8", integer_bias=True)
    return run, model, exported, evaluator.data.normalize(evaluator.data.test_x[:CHECK_IMAGES])


def _codes_and_inputs(model: nn.Module, exported: Exported, x: torch.Tensor):
    """Per quantized layer (ONNX name): the file's and the simulation's codes and float inputs,
    and both logits; the file run exactly with every QuantizeLinear's input and output fetched."""
    proto = onnx.ModelProto()
    proto.CopyFrom(exported.model)
    typed = {v.name: v for v in proto.graph.value_info}
    qs = [n for n in proto.graph.node if n.op_type == "QuantizeLinear"]
    fetched = [t for n in qs for t in (n.input[0], n.output[0]) if t in typed]
    proto.graph.output.extend(typed[t] for t in fetched)
    got = dict(zip(["logits", *fetched], session(proto.SerializeToString()).run(None, {"input": x.numpy()}),
                   strict=True))
    modules, sim, hooks = dict(model.named_modules()), {}, []
    for n in qs:
        layer = n.output[0].removesuffix(".input_quantizer.q")
        quantizer = modules[exported.layers[layer]].input_quantizer
        s, z = host_asymmetric_qparams(quantizer.min_val.item(), quantizer.max_val.item(), quantizer.bits)
        hooks.append(quantizer.register_forward_hook(lambda m, i, o, layer=layer, s=s, z=z: sim.__setitem__(
            layer, (i[0].clone().numpy(), (torch.round(o / s) + z).long().numpy(), s))))
    with torch.inference_mode():
        ref = model(x).numpy()
    for h in hooks:
        h.remove()
    layers = {}
    for n in qs:
        layer = n.output[0].removesuffix(".input_quantizer.q")
        sim_x, sim_q, s = sim[layer]
        q = got[n.output[0]].astype(np.int64)
        layers[layer] = (q, sim_q.reshape(q.shape), got.get(n.input[0], x.numpy()), sim_x.reshape(q.shape), s)
    return got["logits"], ref, layers


def test_w8a8_logit_difference_is_one_step_codes_at_float_rounding_ties(cnn_w8a8):
    """The issue's W8A8 difference (~2e-2 where fp agrees to ~1e-5): no grid or rounding-rule
    mismatch. The first moved codes sit on rounding ties (the two float inputs agree to float32
    precision and ``x / s`` is within 1e-3 of ``k + 1/2``), every code moves by one step, and the
    logit difference is exactly the moved codes of the last layer's input times its weights."""
    _, model, exported, x = cnn_w8a8
    out, ref, layers = _codes_and_inputs(model, exported, x)
    assert np.abs(out - ref).max() > 1e-3  # the fixture shows the effect
    moved = {k: q != sim_q for k, (q, sim_q, *_) in layers.items()}
    assert all(np.abs(q - sim_q).max() <= 1 for q, sim_q, *_ in layers.values())
    first = next(k for k, m in moved.items() if m.any())
    q, sim_q, onnx_x, sim_x, s = layers[first]
    v = sim_x[moved[first]] / s
    assert np.abs(v - np.floor(v) - 0.5).max() <= 1e-3, v  # rounding ties ...
    assert np.abs(onnx_x - sim_x)[moved[first]].max() <= 1e-4 * s  # ... of inputs equal to float precision
    last = list(layers)[-1]  # the last layer: logits = DQ(codes) @ W_hat.T + b on both sides
    q, sim_q, *_, s = layers[last]
    p = exported.encodings["param_encodings"][f"{last}.weight"]
    w = numpy_helper.to_array(next(t for t in exported.model.graph.initializer if t.name == f"{last}.weight"))
    w_hat = w.astype(np.float32) * np.array(p["scale"], dtype=np.float32)[:, None]
    np.testing.assert_allclose(out - ref, ((q - sim_q) * np.float32(s)).astype(np.float32) @ w_hat.T, atol=2e-5)
    assert (out.argmax(1) == ref.argmax(1)).all()


def test_the_check_counts_the_moved_codes_and_prints_their_causes(cnn_w8a8, tmp_path):
    run, model, exported, x = cnn_w8a8
    agreement = compare(model, exported, x)
    assert agreement.ties >= 1 and agreement.unexplained == 0 and agreement.max_step == 1
    assert agreement.argmax == agreement.images == CHECK_IMAGES and agreement.logit_diff > 1e-3
    assert agreement.codes == sum(q.size for q, *_ in _codes_and_inputs(model, exported, x)[2].values())
    lines: list[str] = []
    export_run(run, tmp_path, names=["fp", "w8a8"], log=lines.append)
    w8a8 = next(ln for ln in lines if ln.lstrip().startswith("w8a8 "))
    assert re.search(r"max \|logit diff\| \d\.\d\de-0[23] \(\d+ of [\d,]+ activation codes one step apart: "
                     r"\d+ at rounding ties(, \d+ downstream)?; same class on 256/256 images\)", w8a8), w8a8
    fp = next(ln for ln in lines if ln.lstrip().startswith("fp "))
    assert "activation codes" not in fp


def test_a_real_mismatch_is_reported_unexplained():
    """A file whose grid differs from the simulation's (one input scale 1% off) is no tie."""
    model = _calibrated("mlp", (8, 8))
    exported = export_model(model, SHAPES["mlp"], "w8a8")
    x = torch.randn(64, *SHAPES["mlp"])
    assert compare(model, exported, x).moved == 0
    scale = next(t for t in exported.model.graph.initializer if t.name == "fc3.input_quantizer.scale")
    scale.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(scale) * np.float32(1.01), scale.name))
    found = compare(model, exported, x)
    assert found.unexplained > 0 and "UNEXPLAINED" in found.describe(), found
    assert Agreement(0.0, 4, 4, codes=10).describe() == ""
