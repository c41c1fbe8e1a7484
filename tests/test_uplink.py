"""Compressed communication end to end on the in-process grid: messages, exact byte counts, every
strategy / profile / width / sampling mode composing, and one-line errors."""

from __future__ import annotations

import math

import pytest

from fedquant.app import check_config
from fedquant.experiment.config import ConfigError
from fedquant.experiment.workspace import build_quantized_model, federated_data
from fedquant.federation import protocol as P
from fedquant.federation.compression import Codec, expected_bytes
from fedquant.models.state import float_state
from tests.helpers import TINY, make_config
from tests.inprocess import run_experiment_inprocess

PROFILES = ("strategy.profiles=[{name: big, share: 0.5, bits: [4, 8]}, "
            "{name: small, share: 0.5, bits: [2, 4], width: 0.5}]")


def run(tmp_path, *overrides):
    cfg = make_config(*TINY, "eval.settings=[fp,w4a4]", *overrides)
    return cfg, run_experiment_inprocess(cfg, tmp_path)


def shapes_of(cfg, width: float = 1.0) -> dict[str, tuple[int, ...]]:
    from fedquant.experiment.specs import experiment_specs

    data_spec, model_spec = experiment_specs(cfg)
    model = build_quantized_model(model_spec, federated_data(data_spec).data, width=width)
    return {k: tuple(v.shape) for k, v in float_state(model).items()}


def test_uncompressed_links_count_float32_and_send_no_link_keys(tmp_path):
    from tests.test_strategies import run_inprocess

    _, _, grid = run_inprocess("num_rounds=1")
    assert all(P.UPLINK_BITS not in m.content.config_records[P.CONFIG] for m in grid.sent)
    cfg, results = run(tmp_path)
    float_bytes = 4 * sum(math.prod(s) for s in shapes_of(cfg).values())
    for r in results["rounds"][1:]:
        assert {c["uplink_bytes"] for c in r["train"]["clients"]} == {float_bytes}
        assert {c["downlink_bytes"] for c in r["train"]["clients"]} == {float_bytes}
    assert results["communication"]["uplink_bytes"] == 2 * 3 * float_bytes
    assert results["rounds"][2]["train"]["cumulative_uplink_bytes"] == 2 * 3 * float_bytes


def test_compressed_payloads_are_the_hand_count(tmp_path):
    cfg, results = run(tmp_path, "uplink.bits=4", "uplink.granularity=per_channel", "downlink.bits=8")
    shapes = shapes_of(cfg)
    up = expected_bytes(shapes, Codec(4, granularity="per_channel"))
    down = expected_bytes(shapes, Codec(8, "nearest"))
    assert up < 4 * sum(math.prod(s) for s in shapes.values()) / 6  # an eighth of float32, plus the scales
    for r in results["rounds"][1:]:
        assert [c["uplink_bytes"] for c in r["train"]["clients"]] == [up] * 3
        assert [c["downlink_bytes"] for c in r["train"]["clients"]] == [down] * 3
    assert results["communication"] == {"uplink_bytes": 6 * up, "downlink_bytes": 6 * down}


def test_compression_moves_the_numbers_and_error_feedback_keeps_client_state(tmp_path):
    _, plain = run(tmp_path / "plain")
    _, two = run(tmp_path / "two", "uplink.bits=2", "uplink.error_feedback=true")
    assert plain["final"] != two["final"]  # a 2-bit update is not the float one
    files = sorted(p.relative_to(tmp_path / "two" / "client_state").as_posix()
                   for p in (tmp_path / "two" / "client_state").rglob("*.pt"))
    clients = {int(f.split("/")[0]) for f in files}
    assert files and all(f.split("/")[1] in ("r1.pt", "r2.pt") for f in files) and clients <= set(range(6))


@pytest.mark.parametrize("overrides", [
    ("strategy.server=fedadam", "+strategy.server_options.eta=0.01", "uplink.bits=4", "uplink.error_feedback=true"),
    ("strategy.sampling=per_round", PROFILES, "uplink.bits=3", "uplink.rounding=nearest", "downlink.bits=6",
     "uplink.error_feedback=true"),
    ("strategy=fedavg", PROFILES, "uplink.bits=8", "uplink.send=weights", "uplink.granularity=per_channel"),
])
def test_every_strategy_profile_width_and_sampling_mode_composes(tmp_path, overrides):
    cfg, results = run(tmp_path, *overrides)
    assert all(math.isfinite(v) for v in results["final"].values())
    if "width: 0.5" in " ".join(overrides):  # a sub-model's payload is counted at its own shapes
        small = {c["uplink_bytes"] for r in results["rounds"][1:] for c in r["train"]["clients"]
                 if c["profile"] == "small"}
        codec = Codec(cfg["uplink"]["bits"], granularity=cfg["uplink"]["granularity"])
        assert small <= {expected_bytes(shapes_of(cfg, 0.5), codec)}


@pytest.mark.parametrize(("overrides", "message"), [
    (("uplink.bits=0",), "uplink.bits=0 is not valid: allowed is an integer in 1..16, or 32"),
    (("downlink.bits=17",), "downlink.bits=17 is not valid"),
    (("uplink.rounding=floor",), "uplink.rounding='floor' is not valid"),
    (("uplink.error_feedback=true",), "uplink.error_feedback=true is not valid here: uplink.bits=32"),
    (("uplink.bits=4", "uplink.send=weights", "uplink.error_feedback=true"), "uplink.send=weights sends no update"),
])
def test_bad_link_values_are_one_line(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")) as err:
        check_config(make_config(*TINY, *overrides))
    assert "\n" not in str(err.value)


def test_the_report_plots_accuracy_against_cumulative_uplink(tmp_path):
    from fedquant.report.make import make_report
    from fedquant.report.runs import collect
    from fedquant.report.summary import uplink_curves

    for name, overrides in (("float", ()), ("four", ("uplink.bits=4",))):
        for seed in (0, 1):
            run(tmp_path / "sweep" / f"{name}_{seed}", f"seed={seed}", *overrides)
    methods, _ = collect([tmp_path / "sweep"])
    sent = uplink_curves(methods)
    assert len(sent) == 2 and all(list(c) == [0, 1, 2] and c[0] == 0 for c in sent.values())
    small, big = sorted(sent.values(), key=lambda c: c[2])
    assert 6 < big[2] / small[2] < 8  # 4-bit updates: about an eighth of float32, plus scales
    make_report([tmp_path / "sweep"])
    assert (tmp_path / "sweep" / "report_uplink.png").stat().st_size > 10_000
