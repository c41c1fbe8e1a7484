"""Flower's server-optimizer state in checkpoints: declared per Flower class, checked, exact on resume."""

import io

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord
from flwr.serverapp.strategy import FedAdam, FedXgbBagging

from fedquant.experiment.workspace import build_quantized_model, federated_data
from fedquant.federation.bitwidths import parse_settings
from fedquant.federation.plan import TrainingPlan
from fedquant.models.state import float_state
from strategies import SERVERS, FlowerMismatch, QuantAwareMixin, build_strategy, flower_compat
from strategies.server_state import OPTIMIZER_STATE, export_server_state, import_server_state
from tests.helpers import TINY, make_config
from tests.inprocess import InProcessGrid, recording_strategy, train_config
from tests.test_strategies import setup_and_plan

SERVER_OPTIONS = {"fedavg": {}, "fedprox": {"proximal_mu": 0.01}, "fedavgm": {"server_momentum": 0.9},
                  "fedadam": {"eta": 0.01}, "fedyogi": {"eta": 0.01}, "fedadagrad": {"eta": 0.01}, "fedmedian": {},
                  "fedtrimmedavg": {"beta": 0.2}, "krum": {}, "multikrum": {"num_nodes_to_select": 2}, "bulyan": {},
                  "qfedavg": {"client_learning_rate": 0.05}}
STATEFUL = ("fedavgm", "fedadam", "fedyogi", "fedadagrad")  # state carried from round to round


def plain_plan() -> TrainingPlan:
    return TrainingPlan("fedavg", "fixed", parse_settings(["fp"], "b"), 10, 3, 0, [])


def train(server, rounds, *overrides, initial=None, resume=None, **strategy_kwargs):
    """``rounds`` rounds of a 2-round TINY run in process; ``resume``: ``(round, server_state)``."""
    cfg = make_config(*TINY, *overrides)
    setup, plan = setup_and_plan(cfg)
    strategy = recording_strategy(server, plan, **SERVER_OPTIONS[server], **strategy_kwargs)
    if resume is not None:
        strategy.resume_at(*resume)
    if initial is None:
        initial = float_state(build_quantized_model(setup.model, federated_data(setup.data).data, seed=cfg["seed"]))
    result = strategy.start(grid=InProcessGrid(setup, cfg["clients_per_round"]), initial_arrays=ArrayRecord(initial),
                            num_rounds=rounds, train_config=train_config(cfg))
    return result.arrays.to_torch_state_dict(), strategy


def through_a_checkpoint(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def arrays_of(value) -> list[tuple]:
    """(key, numpy array) pairs of an ArrayRecord, a dict of arrays or a list of arrays."""
    if isinstance(value, ArrayRecord):
        return [(k, a.numpy()) for k, a in value.items()]
    return list(value.items()) if isinstance(value, dict) else list(enumerate(value))


def test_every_server_strategy_has_its_optimizer_state_declared():
    assert set(OPTIMIZER_STATE) == set(SERVERS.values())


@pytest.mark.parametrize("server", sorted(SERVER_OPTIONS))
def test_the_declared_attributes_are_all_that_flower_changes_in_a_round(server):
    """Catches a Flower that keeps new server-optimizer state (which checkpoints would then miss)."""
    cfg = make_config(*TINY)
    setup, plan = setup_and_plan(cfg)
    strategy = recording_strategy(server, plan, **SERVER_OPTIONS[server])
    flower_attributes = set(vars(SERVERS[server](**SERVER_OPTIONS[server])))
    before = dict(vars(strategy))
    model = build_quantized_model(setup.model, federated_data(setup.data).data, seed=cfg["seed"])
    strategy.start(grid=InProcessGrid(setup, 3), initial_arrays=ArrayRecord(float_state(model)), num_rounds=2,
                   train_config=train_config(cfg))
    changed = {k for k, v in vars(strategy).items() if k not in before or before[k] is not v}
    assert changed - flower_attributes == {"in_flight"}  # the mixin's own
    assert changed & flower_attributes == set(OPTIMIZER_STATE[SERVERS[server]])


@pytest.mark.parametrize("server", ["fedavg", "fedprox", "qfedavg", *STATEFUL])
def test_server_state_round_trips_after_a_round(server):
    _, strategy = train(server, 1)
    state = strategy.server_state()
    assert set(state) == set(OPTIMIZER_STATE[SERVERS[server]])  # all set after one round
    fresh = build_strategy(server, strategy.plan, **SERVER_OPTIONS[server])
    fresh.resume_at(1, through_a_checkpoint(state))
    for name in state:
        ours, theirs = getattr(strategy, name), getattr(fresh, name)
        assert type(ours) is type(theirs)
        a, b = arrays_of(ours), arrays_of(theirs)
        assert [k for k, _ in a] == [k for k, _ in b]
        assert all(x.dtype == y.dtype and np.array_equal(x, y) for (_, x), (_, y) in zip(a, b, strict=True))
    again = fresh.server_state()
    assert set(again) == set(state)
    for name, value in state.items():
        (tag, payload), = value.items()
        other = again[name][tag]
        items = zip(payload, other, strict=True) if tag == "list" else ((payload[k], other[k]) for k in payload)
        assert all(torch.equal(a, b) for a, b in items)


@pytest.mark.parametrize("server, overrides", [("fedavgm", ()), ("fedadam", ()), ("fedyogi", ()),
                                               ("fedadam", ("client.freeze_threshold=0.001",))])
def test_resuming_after_a_round_equals_the_uninterrupted_run(server, overrides):
    straight, _ = train(server, 2, *overrides)
    first, strategy = train(server, 1, *overrides)
    state = through_a_checkpoint(strategy.server_state())
    resumed, _ = train(server, 1, *overrides, initial=through_a_checkpoint(first), resume=(1, state))
    assert list(resumed) == list(straight) and all(torch.equal(resumed[k], straight[k]) for k in straight)


def test_adaptive_clipping_resumes_exactly():
    """``strategy.dp=server_adaptive``: the clipping norm moves every round and is checkpointed; the
    noise is drawn per round from the run's seed, so a resumed run equals the uninterrupted one."""
    dp = {"dp": "server_adaptive", "dp_options": {"noise_multiplier": 0.1, "clipped_count_stddev": 1.0}}
    straight, _ = train("fedavg", 2, **dp)
    first, strategy = train("fedavg", 1, **dp)
    state = through_a_checkpoint(strategy.server_state())
    assert float(state["dp"]["clipping_norm"]) != 0.1  # moved from the initial norm
    resumed, again = train("fedavg", 1, initial=through_a_checkpoint(first), resume=(1, state), **dp)
    assert all(torch.equal(resumed[k], straight[k]) for k in straight)
    assert again.server_state()["dp"]["clipping_norm"] != state["dp"]["clipping_norm"]


def test_not_yet_set_is_not_missing():
    strategy = build_strategy("fedadam", plain_plan(), eta=0.01)  # before any round: m_t, v_t, ... are None
    assert strategy.m_t is None and strategy.server_state() == {}
    strategy.resume_at(0, {})


class FedAdamWithoutMT(FedAdam):
    """A Flower whose FedAdam keeps its first moment under another name."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.first_moment = self.m_t
        del self.m_t


def one_line(err) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


def test_a_renamed_attribute_stops_the_run_when_the_strategy_is_built():
    cls = type("QuantAwareFedAdamWithoutMT", (QuantAwareMixin, FedAdamWithoutMT), {})
    with pytest.raises(FlowerMismatch) as err:
        cls(plan=plain_plan(), server_name="fedadam")
    text = one_line(err)
    assert text.startswith("QuantAwareFedAdamWithoutMT (flwr FedAdam) has no attribute 'm_t'")
    assert "flwr" in text and "tested version" in text


def test_an_attribute_lost_later_fails_the_checkpoint_not_silently(monkeypatch):
    monkeypatch.setattr(flower_compat, "installed_flwr", lambda: "1.99.0")
    strategy = build_strategy("fedavgm", plain_plan(), server_momentum=0.9)
    del strategy.momentum_vector  # a stand-in for a Flower that renamed it
    with pytest.raises(FlowerMismatch) as err:
        strategy.server_state()
    text = one_line(err)
    assert "QuantAwareFedAvgM (flwr FedAvgM) has no attribute 'momentum_vector'" in text
    assert "the installed flwr 1.99.0 is not a tested version (1.41 and 1.42)" in text
    with pytest.raises(FlowerMismatch, match="momentum_vector"):
        strategy.resume_at(1, {})


def test_state_of_another_kind_fails_loudly():
    strategy = build_strategy("fedadam", plain_plan(), eta=0.01)
    strategy.m_t = [np.zeros(3)]  # a Flower that keeps the moments as a list
    with pytest.raises(FlowerMismatch, match=r"QuantAwareFedAdam \(flwr FedAdam\)\.m_t holds a list, not the dict"):
        export_server_state(strategy)


def test_an_unsupported_flower_class_is_refused():
    cls = type("QuantAwareFedXgbBagging", (QuantAwareMixin, FedXgbBagging), {})  # trees, not arrays
    with pytest.raises(FlowerMismatch, match="built on flwr's FedXgbBagging, whose server-optimizer state"):
        cls(plan=plain_plan(), server_name="fedxgbbagging")


def test_state_of_another_strategy_is_refused():
    fedadam = build_strategy("fedadam", plain_plan(), eta=0.01)
    with pytest.raises(ValueError, match="'momentum_vector' .* is not state that QuantAwareFedAdam"):
        import_server_state(fedadam, {"momentum_vector": {"list": [torch.zeros(3)]}})
