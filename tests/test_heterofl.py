"""HeteroFL width heterogeneity through the federation: profiles with a ``width``, sub-model
training, the server's overlap average, per-width evaluation, and width with bit-widths."""

from __future__ import annotations

import pytest
import torch
from flwr.app import ArrayRecord

from clients import handle_train
from fedquant.experiment.specs import eval_protocol, experiment_specs
from fedquant.experiment.workspace import build_quantized_model, federated_data
from fedquant.federation import protocol as P
from fedquant.federation.bitwidths import parse_setting
from fedquant.learning.evaluation import Evaluator, model_bytes
from fedquant.models.state import float_state
from fedquant.models.width import extract, overlap_average, without_scalers
from fedquant.runtime.checkpoint import load_checkpoint
from tests.helpers import TINY, make_config
from tests.inprocess import run_experiment_inprocess
from tests.test_strategies import run_inprocess, setup_and_plan, without_seconds

PROFILES = "strategy.profiles=[{name: big, share: 0.5, bits: [fp]}, {name: small, share: 0.5, bits: [fp]%s}]"


def test_profiles_of_width_1_give_exactly_the_numbers_of_profiles_without_width():
    plain, plain_strategy, _ = run_inprocess("strategy=fedavg", PROFILES % "")
    ones, ones_strategy, _ = run_inprocess("strategy=fedavg", PROFILES % ", width: 1.0")
    assert plain.keys() == ones.keys() and all(torch.equal(plain[k], ones[k]) for k in plain)
    assert without_seconds(plain_strategy) == without_seconds(ones_strategy)


def test_server_averages_each_entry_over_the_clients_that_hold_it():
    """One round with a width-0.5 class: the new global model equals the overlap average of the
    clients' replies, recomputed here from the messages the server sent (replayed through the
    real client handler), by :func:`overlap_average` (hand-checked in tests/test_width.py)."""
    cfg = make_config(*TINY, "strategy=fedavg", "num_rounds=1", PROFILES % ", width: 0.5")
    setup, _ = setup_and_plan(cfg)
    new, _, grid = run_inprocess("strategy=fedavg", "num_rounds=1", PROFILES % ", width: 0.5")
    initial = float_state(build_quantized_model(setup.model, federated_data(setup.data).data, seed=cfg["seed"]))
    replies = [handle_train(setup, m) for m in grid.sent]
    widths = [float(m.content.config_records[P.CONFIG][P.WIDTH]) for m in grid.sent]
    assert sorted(widths) != [1.0] * len(widths) and 0.5 in widths
    states = [(r.content.array_records[P.ARRAYS].to_torch_state_dict(),
               float(r.content.metric_records[P.METRICS][P.NUM_EXAMPLES])) for r in replies]
    hidden = "1.weight"  # the MLP's first Linear: 128 units, 64 at width 0.5
    assert {s[hidden].shape[0] for s, _ in states} == {128 if w == 1 else 64 for w in widths}
    expected = overlap_average(initial, states)
    for key in expected:
        assert torch.allclose(new[key], expected[key], atol=1e-6), key


@pytest.fixture(scope="module")
def width_and_bits_run(tmp_path_factory):
    """QAFedAvg where a microcontroller class holds the width-0.5 sub-model at 2 and 4 bits."""
    out = tmp_path_factory.mktemp("width_bits")
    profiles = ("strategy.profiles=[{name: npu, share: 0.5, bits: [8]}, "
                "{name: mcu, share: 0.5, bits: [2, 4], width: 0.5}]")
    cfg = make_config(*TINY, profiles, "eval.settings=[fp,w8a8]", "checkpoint.every=1")
    return cfg, run_experiment_inprocess(cfg, out), out


def test_width_and_bits_train_and_deploy_together(width_and_bits_run):
    cfg, results, _ = width_and_bits_run
    assert set(results["final"]) == {"fp", "w8a8", "fp@0.5", "w2a2@0.5", "w4a4@0.5"}
    assert results["per_profile"]["mcu"] == {"w2a2": results["final"]["w2a2@0.5"], "w4a4": results["final"]["w4a4@0.5"]}
    mcu_clients = [c for r in results["rounds"] for c in r.get("train", {}).get("clients", []) if c["profile"] == "mcu"]
    assert mcu_clients and all(set(c["bits_used"]) <= {"w2a2", "w4a4"} for c in mcu_clients)
    data_spec, spec = experiment_specs(cfg)
    fed = federated_data(data_spec)
    full, half = build_quantized_model(spec, fed.data), build_quantized_model(spec, fed.data, width=0.5)
    sizes = results["model_bytes"]  # width and bits together: the sub-model's bytes at its bits
    assert sizes["w2a2@0.5"] == model_bytes(half, (2, 2)) < model_bytes(half, (4, 4)) == sizes["w4a4@0.5"]
    assert model_bytes(half, (2, 2)) < model_bytes(full, (2, 2)) and sizes["fp@0.5"] == model_bytes(half, (None, None))


def test_extracted_sub_model_evaluated_alone_gives_the_reported_number(width_and_bits_run):
    cfg, results, out = width_and_bits_run
    data_spec, spec = experiment_specs(cfg)
    fed = federated_data(data_spec)
    state = load_checkpoint(out / f"checkpoint_r{cfg['num_rounds']:05d}.pt")["arrays"]
    half = without_scalers(build_quantized_model(spec, fed.data, width=0.5))
    alone = Evaluator(half, fed.data, fed.calibration, fed.validation, [parse_setting("w2a2"), parse_setting("fp")],
                      eval_protocol(cfg),
                      cfg["eval"]["batch_size"])
    measured = alone(extract(state, float_state(half)))["test"]
    assert measured["w2a2"]["accuracy"] == results["final"]["w2a2@0.5"]
    assert measured["fp"]["accuracy"] == results["final"]["fp@0.5"]


def test_clients_receive_the_full_model_and_reply_with_their_sub_model():
    _, _, grid = run_inprocess("num_rounds=1", "strategy.profiles=[{name: a, share: 1.0, bits: [2, 4], width: 0.25}]")
    msg = grid.sent[0]
    assert msg.content.array_records[P.ARRAYS]["1.weight"].shape == (128, 64)
    assert float(msg.content.config_records[P.CONFIG][P.WIDTH]) == 0.25
    setup, _ = setup_and_plan(make_config(*TINY))
    reply = handle_train(setup, msg)
    assert reply.content.array_records[P.ARRAYS]["1.weight"].shape == (32, 64)
    assert isinstance(reply.content.array_records[P.ARRAYS], ArrayRecord)


def test_width_profiles_compose_with_a_server_optimizer():
    arrays, strategy, _ = run_inprocess("num_rounds=2", PROFILES % ", width: 0.5", "strategy=fedavg",
                                        server="fedavgm", server_momentum=0.5)
    assert all(torch.isfinite(v).all() for v in arrays.values()) and len(strategy.reports) == 2
