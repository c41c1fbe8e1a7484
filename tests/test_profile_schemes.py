"""A quantizer scheme per device profile (issue 29): the profile's clients train with it, the
server tests and sizes each profile under it, the export writes it (power-of-two scales exactly
2^k) and onnxruntime scores it as simulated; bad schemes are one-line config errors."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from clients import app as client_app
from fedquant import app as fedquant_app
from fedquant.app import Experiment, check_config, client_setup
from fedquant.experiment.config import ConfigError
from fedquant.experiment.specs import experiment_specs, server_evaluator
from fedquant.experiment.workspace import federated_data
from fedquant.federation import protocol as P
from fedquant.federation.bitwidths import parse_setting
from fedquant.quant import Scheme, get_scheme
from fedquant.runtime.checkpoint import evaluated_state, list_checkpoints, load_checkpoint
from tests.helpers import make_config
from tests.inprocess import InProcessGrid

PROFILES = ("strategy.profiles=[{name: npu, share: 0.5, bits: [8], weight_granularity: per_channel, scale: float}, "
            "{name: mcu, share: 0.5, bits: [4], weight_granularity: per_tensor, scale: pow2}]")
RUN = ("num_clients=4", "clients_per_round=4", "num_rounds=1", "client.local_epochs=1", "client.batch_size=128",
       "quiet=true", "eval.settings=[fp,w4a4]", "eval.initial=false", PROFILES)
MCU = "w4a4:per_tensor-pow2"


@pytest.fixture(scope="module")
def scheme_run(tmp_path_factory):
    """One round on every client of both profiles, in process (tests/inprocess.py, keeping its
    grid: the messages sent), recording the scheme each client's model trained with; no plots."""
    out = tmp_path_factory.mktemp("scheme_run")
    cfg = make_config(*RUN)
    trained = []
    train = client_app.train_local

    def recording(model, *args, **kwargs):
        trained.append(get_scheme(model))
        return train(model, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(client_app, "train_local", recording)
        patch.setattr(fedquant_app, "write_outputs", lambda results, *_: results)
        experiment = Experiment(cfg, out)
        try:
            grid = InProcessGrid(client_setup(cfg, out), cfg["clients_per_round"])
            experiment.serve(grid)
            results = experiment.finish(0.0)
        finally:
            experiment.close()
    return cfg, results, out, grid, trained, experiment.plan


def test_each_profile_trains_with_its_scheme_and_is_reported_under_it(scheme_run):
    cfg, results, _, grid, trained, plan = scheme_run
    sent = [m.content.config_records[P.CONFIG] for m in grid.sent]
    schemes = {plan.profile_name(int(c[P.PARTITION])): P.received_scheme(c, Scheme()) for c in sent}
    assert schemes == {"npu": Scheme("per_channel", "float"), "mcu": Scheme("per_tensor", "pow2")}
    assert trained == [P.received_scheme(c, Scheme()) for c in sent]  # the client's quantizers ran it
    assert set(results["final"]) == {"fp", "w4a4", "w8a8", MCU}
    assert results["per_profile"] == {"npu": {"w8a8": results["final"]["w8a8"]}, "mcu": {"w4a4": results["final"][MCU]}}
    sizes = results["per_profile_model_bytes"]
    assert sizes == {"npu": {"w8a8": results["model_bytes"]["w8a8"]}, "mcu": {"w4a4": results["model_bytes"][MCU]}}
    assert results["model_bytes"][MCU] < results["model_bytes"]["w4a4"]  # one int8 exponent per tensor


def test_the_profile_result_is_the_simulation_under_its_scheme(scheme_run):
    cfg, results, out, *_ = scheme_run
    state = evaluated_state(load_checkpoint(list_checkpoints(out)[-1]))
    evaluator = server_evaluator(cfg, federated_data(experiment_specs(cfg)[0]), [parse_setting("fp")])
    level = next(e for e in evaluator.levels.values())
    model = level.deploy(state, (4, 4))
    assert get_scheme(model) == Scheme("per_tensor", "pow2")
    assert level(state)["test"]["w4a4"]["accuracy"] == results["final"][MCU]


def float32_is_pow2(values: np.ndarray) -> bool:
    bits = np.asarray(values, dtype=np.float32).reshape(-1).view(np.uint32)
    exponent = (bits >> 23) & 0xFF
    return bool(((bits & 0x807FFFFF) == 0).all() and ((exponent > 0) & (exponent < 0xFF)).all())


def test_export_writes_power_of_two_scales_and_onnxruntime_scores_as_simulated(scheme_run, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    from onnx import load, numpy_helper

    from fedquant.export.__main__ import main

    _, results, out, *_ = scheme_run
    main([str(out), "--out", str(tmp_path), "--check"])
    printed = capsys.readouterr().out
    mcu = load(tmp_path / "mcu" / "w4a4.onnx")
    scales = {t.name: numpy_helper.to_array(t) for t in mcu.graph.initializer if t.name.endswith(".scale")}
    assert len(scales) == 9 and all(float32_is_pow2(v) for v in scales.values())  # 3 layers: input, weight, bias
    assert all(v.size == 1 for k, v in scales.items() if k.endswith(".weight.scale"))  # per tensor
    npu = load(tmp_path / "npu" / "w8a8.onnx")
    assert not all(float32_is_pow2(numpy_helper.to_array(t)) for t in npu.graph.initializer if t.name.endswith(".scale"))
    doc = json.loads((tmp_path / "mcu" / "w4a4.encodings.json").read_text())
    assert doc["scheme"] == {"weight_granularity": "per_tensor", "scale": "pow2"}
    line = next(ln for ln in printed.splitlines() if MCU in ln and "simulated" in ln)
    simulated, exact, default = map(float, re.search(
        r"simulated (\d+\.\d\d) onnxruntime (\d+\.\d\d) onnxruntime_default (\d+\.\d\d)", line).groups())
    assert simulated == exact == default == round(100 * results["final"][MCU], 2)


@pytest.mark.parametrize(("overrides", "message"), [
    (["quantization.scale=pow3"], "quantization.scale='pow3' is not valid: allowed are float, pow2"),
    (["strategy.profiles=[{name: a, share: 1.0, bits: [4], scale: log}]"],
     "strategy.profiles[0].scale='log' is not valid: allowed are float, pow2"),
    (["strategy.profiles=[{name: a, share: 1.0, bits: [4], weight_granularity: per_row}]"],
     "strategy.profiles[0].weight_granularity='per_row' is not valid: allowed are per_channel, per_tensor"),
    (["strategy.bits=[fp,4]", "strategy.profiles=[{name: a, share: 1.0, bits: [fp], scale: pow2}]"],
     "strategy.profiles[0].scale='pow2' is not valid: the profile runs only fp"),
    (["quantization.weight_granularity=per_tensor",
      "strategy.profiles=[{name: a, share: 1.0, bits: [4], weight_granularity: per_channel}]"],
     "strategy.profiles[0].weight_granularity='per_channel' is not valid with quantization.weight_granularity="
     "per_tensor: the shared weight ranges have one per tensor; allowed is per_tensor"),
    (["quantization.learned_ranges=true",
      "strategy.profiles=[{name: a, share: 1.0, bits: [4], weight_granularity: per_tensor}]"],
     "strategy.profiles[0].weight_granularity='per_tensor' is not valid with quantization.weight_granularity="
     "per_channel: learned ranges (quantization.learned_ranges=true) keep one per channel"),
    (["client.freeze_threshold=0.1", "strategy.profiles=[{name: a, share: 1.0, bits: [4], scale: pow2}]"],
     "client.freeze_threshold is not supported with strategy.profiles[0].scale='pow2'"),
])
def test_a_scheme_that_is_unknown_or_that_the_profile_cannot_meet_is_one_line(overrides, message):
    with pytest.raises(ConfigError) as err:
        check_config(make_config(*overrides))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_batchnorm_after_a_power_of_two_conv_is_exported_as_a_float_node():
    """s_w a is no power of two: the BatchNorm stays a float affine (in the simulation's integer
    biases and in the file), so every scale in the file is 2^k, and the file computes the model."""
    pytest.importorskip("onnxruntime")
    import torch
    from torch import nn

    from fedquant.export.check import logits, non_pow2_scales, session
    from fedquant.export.onnx_export import export_model
    from fedquant.quant import QuantConfig, calibrate, quantize_model
    from fedquant.quant.graph import batchnorm_after
    from fedquant.quant.integer_bias import quantize_biases

    torch.manual_seed(5)
    model = quantize_model(nn.Sequential(nn.Conv2d(1, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                                         nn.Linear(4 * 6 * 6, 3)), QuantConfig(4, 4, scale="pow2"))
    x = torch.randn(32, 1, 8, 8)
    model.train()
    model(x)
    calibrate(model, [x], reestimate_bn=True)
    quantize_biases(model, batchnorm_after(model))
    exported = export_model(model.eval(), (1, 8, 8), "w4a4", integer_bias=True)
    assert exported.folded == [] and "power-of-two" in exported.encodings["batchnorm"]["bn1"]
    assert non_pow2_scales(exported.model) == []
    with torch.inference_mode():
        reference = model(x).numpy()
    assert np.abs(logits(session(exported.to_bytes()), x) - reference).max() < 1e-4
