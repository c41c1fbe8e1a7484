"""ONNX export (fedquant.export): the files compute what the server's evaluation simulates.

onnxruntime runs the files "exact" (its WeightBiasQuantization pass off: the file's own float
biases, see fedquant.export.check). What remains are float kernels summing in another order than
torch's and QuantizeLinear dividing by s where the simulation multiplies by 1/s: a few integer
codes move by one step, so logits agree to float precision in fp and to within a small fraction
of their range in quantized settings, and test accuracies agree.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from benchmarks.timing.onnx_latency import train  # noqa: E402
from fedquant.experiment.specs import experiment_specs, server_evaluator  # noqa: E402
from fedquant.experiment.workspace import federated_data  # noqa: E402
from fedquant.export import run as export  # noqa: E402
from fedquant.export.__main__ import main  # noqa: E402
from fedquant.export.check import logits, onnx_accuracy, session  # noqa: E402
from fedquant.export.onnx_export import export_model  # noqa: E402
from fedquant.federation.bitwidths import parse_setting, setting_name  # noqa: E402
from fedquant.models import build_model  # noqa: E402
from fedquant.quant import QuantConfig, calibrate, quant_layers, quantize_model, set_bitwidth  # noqa: E402
from fedquant.quant.grids import host_asymmetric_qparams  # noqa: E402
from fedquant.runtime.checkpoint import save_checkpoint  # noqa: E402
from tests.helpers import make_config  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PROFILES = "strategy.profiles=[{name: npu8, share: 0.5, bits: [8]}, {name: mcu, share: 0.5, bits: [2, 4]}]"
SETTINGS = ["fp", "w8a8", "w4a4", "w3a3", "w2a2"]


def trained_state(cfg: dict, steps: int = 60) -> dict:
    """A seeded model of the run's config after ``steps`` float SGD steps on the clients' images
    (the benchmark's own training, :func:`benchmarks.timing.onnx_latency.train`)."""
    data_spec, model_spec = experiment_specs(cfg)
    return train(model_spec, federated_data(data_spec), steps, seed=cfg["seed"])


@pytest.fixture(scope="module")
def mlp_run(tmp_path_factory):
    """A digits MLP run directory (first/last layers pinned at 8 bits, two device profiles)."""
    cfg = make_config("num_rounds=3", PROFILES)
    run = tmp_path_factory.mktemp("mlp_run")
    state = trained_state(cfg)
    save_checkpoint(run, 3, {"arrays": state, "config": cfg})
    return run, cfg, state


def evaluator_for(cfg: dict, settings: list[str]):
    return server_evaluator(cfg, federated_data(experiment_specs(cfg)[0]), [parse_setting(s) for s in settings])


def assert_close_logits(ref: np.ndarray, out: np.ndarray, quantized: bool) -> None:
    """fp: float precision. Quantized: a few one-step code flips (docstring) move at most 1% of
    the logit range, in at most 5% of the samples."""
    d = np.abs(out - ref)
    scale = float(np.abs(ref).max())
    if not quantized:
        assert d.max() <= 1e-5 * max(1.0, scale), d.max()
        return
    assert d.max() <= 0.01 * scale, (d.max(), scale)
    assert (d.max(1) > 1e-4).mean() <= 0.05, (d.max(1) > 1e-4).mean()


def test_mlp_accuracy_and_logits_match_the_simulation(mlp_run):
    _, cfg, state = mlp_run
    evaluator = evaluator_for(cfg, SETTINGS)
    simulated = evaluator(state)["test"]
    data = evaluator.data
    x = data.normalize(data.test_x)
    for name in SETTINGS:
        model = evaluator.deploy(state, parse_setting(name))
        blob = export_model(model, data.image_shape, name).to_bytes()
        exact = session(blob)
        acc, _ = onnx_accuracy(exact, data, data.test_x, data.test_y)
        tolerance = 1e-9 if name == "fp" else 0.001 if name in ("w8a8", "w4a4") else 0.005
        assert abs(acc - simulated[name]["accuracy"]) <= tolerance, (name, acc, simulated[name]["accuracy"])
        with torch.inference_mode():
            ref = model(x).numpy()
        assert_close_logits(ref, logits(exact, x), quantized=name != "fp")
        assert logits(session(blob, exact=False), x[:8]).shape == (8, 10)  # onnxruntime's default runs too


def test_weights_and_activation_grids_are_the_simulated_ones(mlp_run):
    """Integers times scales give the evaluator's fake-quantized weights bit for bit; containers
    and clips follow the bit-widths (pinned first/last layers at 8 bits)."""
    _, cfg, state = mlp_run
    evaluator = evaluator_for(cfg, ["w4a4"])
    model = evaluator.deploy(state, (4, 4))
    exported = export_model(model, evaluator.data.image_shape, "w4a4")
    inits = {t.name: t for t in exported.model.graph.initializer}
    enc = exported.encodings
    layers = dict(model.named_modules())
    expected_bits = {"fc1": 8, "fc3": 4, "fc5": 8}  # MLP: Flatten, Linear 1, ReLU, Linear 3, ReLU, Linear 5
    for name, bits in expected_bits.items():
        layer = layers[exported.layers[name]]  # fc3 is the Sequential's module 3
        q = numpy_helper.to_array(inits[f"{name}.weight"]).astype(np.int64)
        assert inits[f"{name}.weight"].data_type == (TensorProto.INT4 if bits == 4 else TensorProto.INT8)
        p = enc["param_encodings"][f"{name}.weight"]
        assert (p["bitwidth"], p["qmin"], p["qmax"], p["channel_axis"]) == (bits, -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1, 0)
        assert len(p["scale"]) == layer.out_features and set(p["offset"]) == {0}
        w_hat = layer.weight_quantizer(layer.weight).detach().numpy()
        assert np.array_equal(q.astype(np.float32) * np.array(p["scale"], dtype=np.float32)[:, None], w_hat)
        aq = layer.input_quantizer
        scale, zero_point = host_asymmetric_qparams(aq.min_val.item(), aq.max_val.item(), bits)
        (tensor, a), = [(k, v) for k, v in enc["activation_encodings"].items() if v["consumers"] == [name]]
        assert a["scale"] == [scale] and a["offset"] == [-int(zero_point)] and a["container"] == "uint8"
        assert (a["bitwidth"], a["qmax"], a["is_symmetric"]) == (bits, 2**bits - 1, False)
    clips = {n.name: n for n in exported.model.graph.node if n.op_type == "Clip"}
    assert list(clips) == ["fc3.input_quantizer.clip"]  # only the 4-bit input needs a clip inside UINT8
    a = next(v for v in enc["activation_encodings"].values() if v["consumers"] == ["fc3"])
    clip_max = numpy_helper.to_array(inits[clips["fc3.input_quantizer.clip"].input[2]])
    assert clip_max == np.float32(15 + a["offset"][0]) * np.float32(a["scale"][0])


@pytest.mark.parametrize("learned", [False, True])
def test_full_grid_per_tensor_and_learned_ranges_export_exactly(learned):
    """Full two's-complement grid, per-tensor weights, LSQ-learned ranges, mixed bit-widths."""
    model = quantize_model(build_model("mlp", _Digits()), QuantConfig(
        weight_bits=None, act_bits=None, weight_granularity="per_tensor", narrow_range=False, learned_ranges=learned))
    x = torch.randn(64, 1, 8, 8)
    for setting in ((4, 4), (3, 5), (8, 2), (16, 12)):
        set_bitwidth(model, *setting)
        calibrate(model, [x])
        model.eval()
        with torch.inference_mode():
            ref = model(x).numpy()
        exported = export_model(model, (1, 8, 8), setting_name(setting))
        weights = exported.encodings["param_encodings"]
        assert all(p["qmin"] == -(2 ** (setting[0] - 1)) and p["channel_axis"] is None for p in weights.values())
        assert_close_logits(ref, logits(session(exported.to_bytes()), x), quantized=True)


def _codes(model_proto, x: torch.Tensor) -> dict[str, np.ndarray]:
    """The integer codes of every QuantizeLinear in the exported graph, run exactly."""
    proto = onnx.ModelProto()
    proto.CopyFrom(model_proto)
    names = [n.output[0] for n in proto.graph.node if n.op_type == "QuantizeLinear"]
    proto.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.UINT8, None) for n in names)
    outs = session(proto.SerializeToString()).run(names, {"input": x.numpy()})
    return {n.removesuffix(".input_quantizer.q"): o.astype(np.int64) for n, o in zip(names, outs, strict=True)}


def test_cnn_batchnorm_folded_or_float_agrees_and_codes_match():
    """CNN (conv-BN-ReLU-pool): BN folded into the DQ scale and bias, or kept as a float op;
    both compute the simulated model, with at most 0.1% of the integer codes one step apart."""
    cfg = make_config("model=cnn")
    state = trained_state(cfg, steps=40)
    evaluator = evaluator_for(cfg, ["w8a8", "w4a4"])
    data = evaluator.data
    x = data.normalize(data.test_x[:128])
    for setting in ((8, 8), (4, 4)):
        model = evaluator.deploy(state, setting).eval()
        sim_codes, hooks = {}, []
        for name, layer in model.named_modules():
            if layer in set(quant_layers(model)):
                s, z = host_asymmetric_qparams(layer.input_quantizer.min_val.item(),
                                               layer.input_quantizer.max_val.item(), layer.input_quantizer.bits)
                hooks.append(layer.input_quantizer.register_forward_hook(
                    lambda m, i, o, name=name, s=s, z=z, codes=sim_codes: codes.__setitem__(
                        name, (torch.round(o / s) + z).long().contiguous().numpy())))
        with torch.inference_mode():
            ref = model(x).numpy()
        for h in hooks:
            h.remove()
        folded = export_model(model, data.image_shape, setting_name(setting))
        kept = export_model(model, data.image_shape, setting_name(setting), fold_batchnorm=False)
        assert folded.folded == ["bn1", "bn5"] and kept.folded == []
        assert [n.op_type for n in folded.model.graph.node].count("BatchNormalization") == 0
        assert [n.op_type for n in kept.model.graph.node].count("BatchNormalization") == 2
        bn = model[1]
        a = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach().numpy()
        s_w = kept.encodings["param_encodings"]["conv0.weight"]["scale"]
        np.testing.assert_allclose(folded.encodings["param_encodings"]["conv0.weight"]["scale"], np.array(s_w) * a,
                                   rtol=1e-6)
        for exported in (folded, kept):
            assert_close_logits(ref, logits(session(exported.to_bytes()), x), quantized=True)
            codes = {exported.layers[k]: v for k, v in _codes(exported.model, x).items()}  # by module name
            assert set(codes) == set(sim_codes)
            for name, code in codes.items():
                diff = np.abs(code - sim_codes[name].reshape(code.shape))
                assert diff.max() <= 1 and (diff > 0).mean() <= 1e-3, (name, (diff > 0).mean())


def test_negative_batchnorm_scale_keeps_that_batchnorm_in_float():
    cfg = make_config("model=cnn")
    state = trained_state(cfg, steps=10)
    state["1.weight"] = state["1.weight"].clone()
    state["1.weight"][3] = -0.5  # a negative gamma: no positive DQ scale can absorb it
    evaluator = evaluator_for(cfg, ["w4a4"])
    model = evaluator.deploy(state, (4, 4)).eval()
    exported = export_model(model, evaluator.data.image_shape, "w4a4")
    assert exported.folded == ["bn5"] and "kept as float" in exported.encodings["batchnorm"]["bn1"]
    x = evaluator.data.normalize(evaluator.data.test_x[:64])
    with torch.inference_mode():
        ref = model(x).numpy()
    assert_close_logits(ref, logits(session(exported.to_bytes()), x), quantized=True)


class _Digits:
    image_shape = (1, 8, 8)
    num_classes = 10


class _Cifar:
    image_shape = (3, 32, 32)
    num_classes = 10


@pytest.mark.parametrize(("norm", "granularity", "narrow"), [("batch", "per_channel", True),
                                                             ("batch", "per_tensor", False),
                                                             ("group", "per_tensor", True)])
def test_resnet20_forward_shapes_and_logits(norm, granularity, narrow):
    """ResNet-20 (option-A shortcuts: strided Slice + channel Pad) on CIFAR-shaped input, any
    batch size; fp to float precision, w8a8/w4a4 within a few per cent of the logit range."""
    model = quantize_model(build_model("resnet20", _Cifar(), norm=norm), QuantConfig(
        weight_bits=None, act_bits=None, weight_granularity=granularity, narrow_range=narrow, pin_first_last=True))
    x = torch.randn(12, 3, 32, 32)
    for setting in ((None, None), (8, 8), (4, 4)):
        set_bitwidth(model, *setting)
        calibrate(model, [x[:8]], reestimate_bn=True)
        model.eval()
        with torch.inference_mode():
            ref = model(x).numpy()
        exported = export_model(model, (3, 32, 32), setting_name(setting))
        ops = [n.op_type for n in exported.model.graph.node]
        assert ops.count("Slice") == ops.count("Pad") == 2 and "GlobalAveragePool" in ops
        assert ops.count("GroupNormalization") == (19 if norm == "group" else 0)
        assert len(exported.folded) == (19 if norm == "batch" else 0)
        sess = session(exported.to_bytes())
        assert logits(sess, x[:1]).shape == (1, 10)
        out = logits(sess, x)
        d = np.abs(out - ref)
        if setting == (None, None):
            assert d.max() <= 1e-5, d.max()
        else:
            assert d.max() <= 0.1 * np.abs(ref).max(), (setting, d.max())
            assert (out.argmax(1) == ref.argmax(1)).mean() >= 0.75
        if setting == (4, 4):
            p = exported.encodings["param_encodings"]
            assert p["conv.weight"]["bitwidth"] == 8 and p["fc.weight"]["bitwidth"] == 8  # pinned
            inner = p["blocks.0.conv1.weight"]
            assert inner["bitwidth"] == 4 and inner["qmin"] == (-7 if narrow else -8)
            if norm == "group" and granularity == "per_tensor":
                assert len(inner["scale"]) == 1 and inner["channel_axis"] is None
            else:  # per channel, also per-tensor weights once BatchNorm is folded into the scale
                assert len(inner["scale"]) == 16 and inner["channel_axis"] == 0


# -- the command line --------------------------------------------------------------------------

def run_cli(*argv: str) -> None:
    main([str(a) for a in argv])


def test_cli_default_writes_eval_settings_and_profile_folders(mlp_run, tmp_path, capsys):
    run, cfg, _ = mlp_run
    out = tmp_path / "export"
    run_cli(run, "--out", out)
    top = sorted(p.name for p in out.iterdir() if p.is_file())
    evaluated = ["fp", "w8a8", "w6a6", "w4a4", "w3a3", "w2a2"]
    assert cfg["eval"]["settings"] == evaluated
    assert top == sorted(f"{s}{ext}" for s in evaluated for ext in (".onnx", ".encodings.json"))
    assert sorted(p.name for p in (out / "npu8").iterdir()) == ["w8a8.encodings.json", "w8a8.onnx"]
    assert sorted(p.name for p in (out / "mcu").iterdir()) == sorted(
        f"{s}{ext}" for s in ("w2a2", "w4a4") for ext in (".onnx", ".encodings.json"))
    assert not list(out.rglob(".*"))  # no temporary files left
    assert (out / "mcu" / "w4a4.onnx").read_bytes() == (out / "w4a4.onnx").read_bytes()
    doc = json.loads((out / "w2a2.encodings.json").read_text())
    assert doc["setting"] == "w2a2" and doc["param_encodings"]["fc3.weight"]["container"] == "int4"
    printed = capsys.readouterr().out
    assert re.search(r"^\s+w4a4\s+[\d,]+ bytes on disk\s+model_bytes\s+[\d,]+\s+max \|logit diff\| \d\.\d\de[-+]\d\d"
                     r"  \[4/6, [\d.]+ s\]$", printed, re.M)  # setting 4 of the 6 (profiles' are among them), its time


def test_cli_accepts_a_checkpoint_file_and_unevaluated_settings(mlp_run, tmp_path, capsys):
    run, _, _ = mlp_run
    checkpoint = next(run.glob("checkpoint_r*.pt"))
    run_cli(checkpoint, "--settings", "w5a5", "--out", tmp_path, "--check")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w5a5.encodings.json", "w5a5.onnx"]
    line = next(ln for ln in capsys.readouterr().out.splitlines() if "w5a5 " in ln)
    sim, ort_exact = re.search(r"simulated (\d+\.\d\d) onnxruntime (\d+\.\d\d)", line).groups()
    assert sim == ort_exact and "(not in the run's eval.settings)" in line


def _expect_error(capsys, *argv, match: str) -> str:
    with pytest.raises(SystemExit) as stop:
        run_cli(*argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: "), err
    assert re.search(match, err), err
    return err


def test_cli_errors_are_one_line_and_exit_2(mlp_run, tmp_path, capsys):
    run, cfg, state = mlp_run
    out = tmp_path / "out"
    empty = tmp_path / "empty"
    empty.mkdir()
    _expect_error(capsys, empty, match=r"no checkpoint_r\*\.pt in this run directory")
    _expect_error(capsys, tmp_path / "missing", match="no such run directory or checkpoint file")
    _expect_error(capsys, run, "--settings", "w4x4", "--out", out, match=r"--settings\[0\]='w4x4' is not valid")
    _expect_error(capsys, run, "--settings", "w17a17", "--out", out, match="out of range")
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    _expect_error(capsys, run, "--settings", "w4a4", "--out", blocker / "export", match="cannot write there")
    no_calibration = tmp_path / "no_calibration"
    save_checkpoint(no_calibration, 3, {"arrays": state, "config": {
        **cfg, "dataset": {**cfg["dataset"], "holdout": 0, "validation": 0}}})
    _expect_error(capsys, no_calibration, "--settings", "fp", "w4a4", "--out", out,
                  match="cannot calibrate w4a4: the run has no calibration images")
    no_config = tmp_path / "no_config"
    save_checkpoint(no_config, 3, {"arrays": state})
    _expect_error(capsys, no_config, "--out", out, match="holds no run config")
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "checkpoint_r00003.pt").write_bytes(b"not a checkpoint")
    _expect_error(capsys, corrupt, "--out", out, match="corrupt or unreadable checkpoint")
    assert not out.exists() or not any(out.iterdir())


def test_cli_without_the_extra_says_how_to_install(mlp_run, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    _expect_error(capsys, mlp_run[0], match=r'onnxruntime is not installed .*pip install -e "\.\[export\]"')


def test_cli_writes_nothing_when_a_later_setting_fails(mlp_run, tmp_path, monkeypatch, capsys):
    built = export.build_artifact
    calls = []

    def fail_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise export.ExportError("cannot calibrate w3a3: simulated failure")
        return built(*args, **kwargs)

    monkeypatch.setattr(export, "build_artifact", fail_second)
    _expect_error(capsys, mlp_run[0], "--settings", "w4a4", "w3a3", "--out", tmp_path / "out", match="simulated failure")
    assert not list((tmp_path / "out").iterdir())


def test_onnx_latency_benchmark_runs():
    proc = subprocess.run([sys.executable, "-m", "benchmarks.timing.onnx_latency", "--tiny", "--settings", "fp", "w4a4",
                           "--repeats", "1", "--calls", "2", "--train-steps", "5"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r"^\s+w4a4\s+[\d,]+\s+[\d,]+\s+\d\.\d\d\s+\d+\.\d{3}\s+\d+\.\d\d\s+\d+\.\d\d  \S", proc.stdout, re.M)


def test_a_width_profile_exports_its_own_sub_model(tmp_path):
    """HeteroFL: a profile of width 0.5 gets the width-0.5 sub-model cut from the global model,
    calibrated as the server's per-width evaluation; onnxruntime gives the reported accuracy."""
    cfg = make_config("num_rounds=3", "strategy.profiles=[{name: full, share: 0.5, bits: [8]}, "
                      "{name: half, share: 0.5, bits: [4], width: 0.5}]")
    run = tmp_path / "run"
    state = trained_state(cfg)
    save_checkpoint(run, 3, {"arrays": state, "config": cfg})
    out = tmp_path / "export"
    export.export_run(run, out, log=lambda *_: None)
    half, full = (out / "half" / "w4a4.onnx").read_bytes(), (out / "w4a4.onnx").read_bytes()
    assert half != full and len(half) < len(full)
    evaluator = evaluator_for(cfg, ["w4a4"])
    reported = evaluator(state)["test"]["w4a4@0.5"]["accuracy"]
    data = evaluator.data
    acc, _ = onnx_accuracy(session(half), data, data.test_x, data.test_y)
    assert abs(acc - reported) <= 0.001, (acc, reported)
    assert json.loads((out / "half" / "w4a4.encodings.json").read_text())["setting"] == "w4a4"
