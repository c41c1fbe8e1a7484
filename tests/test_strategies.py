"""Strategies and clients together, in process: aggregation, assignment, reproducibility."""

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg

from clients import ClientSetup
from fedquant.experiment.specs import experiment_specs, training_plan
from fedquant.experiment.workspace import build_quantized_model, federated_data
from fedquant.federation import protocol as P
from fedquant.federation.bitwidths import parse_settings
from fedquant.federation.plan import TrainingPlan
from fedquant.federation.profiles import Profile, assign_profiles
from fedquant.models.state import float_state
from strategies import FlowerMismatch, QuantAwareMixin
from strategies.sending import shared_record
from tests.helpers import TIMING_KEYS, TINY, make_config
from tests.inprocess import InProcessGrid, recording_strategy, set_identity, train_config


def setup_and_plan(cfg):
    data, model = experiment_specs(cfg)
    return ClientSetup(data, model), training_plan(cfg)


def run_inprocess(*overrides, server="fedavg", nodes=None, **server_options):
    cfg = make_config(*TINY, *overrides)
    setup, plan = setup_and_plan(cfg)
    strategy = recording_strategy(server, plan, **server_options)
    model = build_quantized_model(setup.model, federated_data(setup.data).data, seed=cfg["seed"])
    grid = InProcessGrid(setup, nodes or cfg["clients_per_round"])
    result = strategy.start(grid=grid, initial_arrays=ArrayRecord(float_state(model)),
                            num_rounds=cfg["num_rounds"], train_config=train_config(cfg))
    return result.arrays.to_torch_state_dict(), strategy, grid


def without_seconds(strategy) -> list[dict]:
    """Client reports minus their wall and CPU time (which differ between identical runs)."""
    return [{k: v for k, v in vars(c).items() if k not in TIMING_KEYS} for r in strategy.reports.values() for c in r.clients]


def fake_reply(request: Message, partition: int, n: int, value: float) -> Message:
    arrays = ArrayRecord({"w": torch.full((2, 3), value), "b": torch.tensor([value])})
    metrics = MetricRecord({P.NUM_EXAMPLES: n, P.TRAIN_LOSS: value, P.PARTITION: partition, P.BITS_HIST: [0] * 289,
                            P.TRAIN_SECONDS: 0.1, P.TRAIN_CPU_SECONDS: 0.1, P.NODE_INDEX: -1, P.TRACKED_STEPS: 0})
    return Message(RecordDict({P.ARRAYS: arrays, P.METRICS: metrics}), reply_to=request)


def test_aggregation_is_example_weighted_mean():
    set_identity()
    plan = TrainingPlan("fedavg", "fixed", parse_settings(["fp"], "b"), 10, 3, 0, [])
    strategy = recording_strategy("fedavg", plan)
    request = Message(RecordDict({P.CONFIG: ConfigRecord({})}), dst_node_id=1, message_type="train")
    replies = [fake_reply(request, 2, 10, 1.0), fake_reply(request, 0, 30, 2.0), fake_reply(request, 1, 60, 4.0)]
    arrays, metrics = strategy.aggregate_train(1, replies)
    expected = (10 * 1.0 + 30 * 2.0 + 60 * 4.0) / 100
    state = arrays.to_torch_state_dict()
    assert torch.allclose(state["w"], torch.full((2, 3), expected))
    assert state["b"].item() == pytest.approx(expected)
    assert metrics[P.TRAIN_LOSS] == pytest.approx(expected) and metrics[P.NUM_EXAMPLES] == 100
    assert [c.partition for c in strategy.reports[1].clients] == [0, 1, 2]  # partition order


def test_one_message_per_node_with_its_own_config_and_fedprox_mu():
    _, strategy, grid = run_inprocess("strategy.profiles=[{name: a, share: 0.5, bits: [8]}, {name: b, share: 0.5, bits: [2, 4]}]",
                                      server="fedprox", proximal_mu=0.01)
    assert len(grid.sent) == 2 * 3
    for r in (1, 2):
        msgs = grid.sent[(r - 1) * 3: r * 3]
        configs = [m.content.config_records[P.CONFIG] for m in msgs]
        assert len({m.metadata.dst_node_id for m in msgs}) == 3
        assert [c[P.PARTITION] for c in configs] == strategy.plan.sample_clients(r)
        assert all(c["proximal-mu"] == 0.01 and c["server-round"] == r for c in configs)
        for c in configs:
            allowed = {"a": {"w8a8"}, "b": {"w2a2", "w4a4"}}[strategy.plan.profile_name(c[P.PARTITION])]
            assert set(c[P.SETTINGS]) == allowed
    for report in strategy.reports.values():
        for client in report.clients:
            allowed = {"a": {"w8a8"}, "b": {"w2a2", "w4a4"}}[client.profile]
            assert set(client.bits_used) <= allowed and sum(client.bits_used.values()) > 0


def test_qafedavg_with_float_only_reproduces_fedavg_exactly():
    fedavg, _, _ = run_inprocess("strategy=fedavg")
    qa_fp, strategy, _ = run_inprocess("strategy=qafedavg", "strategy.bits=[fp]")
    assert all(torch.equal(fedavg[k], qa_fp[k]) for k in fedavg)
    assert all(c.bits_used == {"fp": c.bits_used["fp"]} for c in strategy.reports[1].clients)


def test_largest_clients_go_to_the_nodes_served_first_without_changing_results():
    work = [len(c) for c in federated_data(experiment_specs(make_config(*TINY))[0]).clients]
    plain, s_plain, _ = run_inprocess("strategy=qafedavg", "num_rounds=3")
    ordered, s_ordered, grid = run_inprocess("strategy=qafedavg", "num_rounds=3", client_work=work)
    assert all(torch.equal(plain[k], ordered[k]) for k in plain)
    assert without_seconds(s_plain) == without_seconds(s_ordered)
    for r in (2, 3):  # from round 2 on, the engine's node numbering is known from the replies
        msgs = sorted(grid.sent[(r - 1) * 3: r * 3], key=lambda m: grid.node_index[m.metadata.dst_node_id])
        sizes = [work[m.content.config_records[P.CONFIG][P.PARTITION]] for m in msgs]
        assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) > 1


@pytest.mark.parametrize("sampling", ["per_step", "per_round"])
def test_same_seed_same_clients_bits_and_weights(sampling):
    a, sa, _ = run_inprocess(f"strategy.sampling={sampling}")
    b, sb, _ = run_inprocess(f"strategy.sampling={sampling}")
    c, sc, _ = run_inprocess(f"strategy.sampling={sampling}", "seed=1")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert without_seconds(sa) == without_seconds(sb)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    if sampling == "per_round":  # one setting per client and round
        assert all(len(x.bits_used) == 1 for r in sa.reports.values() for x in r.clients)
    else:
        assert any(len(x.bits_used) > 1 for r in sa.reports.values() for x in r.clients)


COMPOSING = [("fedavgm", {"server_momentum": 0.9}), ("fedadam", {"eta": 0.01}), ("fedyogi", {"eta": 0.01}),
             ("fedadagrad", {"eta": 0.01}), ("fedmedian", {}), ("fedtrimmedavg", {"beta": 0.34}), ("krum", {}),
             ("multikrum", {"num_nodes_to_select": 2}), ("bulyan", {}), ("qfedavg", {"client_learning_rate": 0.05})]


@pytest.mark.parametrize("server, options", COMPOSING, ids=[s for s, _ in COMPOSING])
def test_flower_server_strategies_compose(server, options):
    """Every Flower strategy that aggregates arrays trains 2 rounds under the mixin: every client
    reported, the model moved and stayed finite."""
    from strategies import SERVERS

    state, strategy, _ = run_inprocess(server=server, **options)
    assert type(strategy).__name__ == f"QuantAware{SERVERS[server].__name__}"
    assert [len(r.clients) for r in strategy.reports.values()] == [3, 3]
    assert all(torch.isfinite(v).all() for v in state.values())
    setup, _ = setup_and_plan(make_config(*TINY))
    initial = float_state(build_quantized_model(setup.model, federated_data(setup.data).data, seed=0))
    assert not all(torch.equal(state[k], initial[k]) for k in state)


def test_profiles_assigned_by_share_and_seed():
    profiles = [Profile("npu8", 0.5, (8,)), Profile("dsp4", 0.3, (4, 8)), Profile("mcu2", 0.2, (2, 4))]
    labels = assign_profiles(profiles, 10, seed=0)
    assert sorted(labels) == [0] * 5 + [1] * 3 + [2] * 2
    assert labels == assign_profiles(profiles, 10, seed=0) and labels != assign_profiles(profiles, 10, seed=1)


def test_client_loads_dataset_once_per_process():
    cfg = make_config(*TINY)
    setup, _ = setup_and_plan(cfg)
    federated_data.cache_clear()
    run_inprocess()
    run_inprocess()
    assert federated_data.cache_info().misses == 1


@pytest.mark.parametrize("strategy, regularizer", [("fedavg", "kure"), ("qafedavg", "gradl1")])
def test_regularized_local_training_runs_and_changes_the_model(strategy, regularizer):
    plain, _, _ = run_inprocess(f"strategy={strategy}")
    reg, s, _ = run_inprocess(f"strategy={strategy}", f"client.regularizer={regularizer}", "client.reg_weight=0.05")
    assert all(torch.isfinite(v).all() for v in reg.values())
    assert not all(torch.equal(plain[k], reg[k]) for k in plain)
    assert all(c.loss > 0 for r in s.reports.values() for c in r.clients)


@pytest.mark.parametrize("nodes", [1, 2, 5])
def test_any_number_of_nodes_trains_the_same_clients_to_the_same_model(nodes):
    """The plan's clients are dealt out over however many nodes there are (flwr run's default
    federation has 2): fewer nodes train several clients each, more nodes leave some idle."""
    ref, ref_strategy, _ = run_inprocess("strategy.sampling=per_round")
    state, strategy, grid = run_inprocess("strategy.sampling=per_round", nodes=nodes)
    assert all(torch.equal(state[k], ref[k]) for k in ref)
    assert without_seconds(strategy) == without_seconds(ref_strategy)
    per_node = {}
    for m in grid.sent:
        per_node[m.metadata.dst_node_id] = per_node.get(m.metadata.dst_node_id, 0) + 1
    assert len(per_node) == min(nodes, 3) and sum(per_node.values()) == 3 * 2  # 3 clients x 2 rounds


def test_the_round_learning_rate_follows_the_schedule():
    import math

    _, _, grid = run_inprocess("client.lr_schedule=cosine", "client.lr_min_factor=0.1", "num_rounds=3")
    sent = {}
    for m in grid.sent:
        cfg = m.content.config_records[P.CONFIG]
        sent.setdefault(int(cfg["server-round"]), set()).add(cfg[P.LR])
    lr = make_config()["client"]["lr"]
    expected = {r: lr * 0.1 + (lr - lr * 0.1) * (1 + math.cos(math.pi * (r - 1) / 3)) / 2 for r in (1, 2, 3)}
    assert all(len(v) == 1 for v in sent.values())  # every client of a round gets the round's lr
    assert {r: next(iter(v)) for r, v in sent.items()} == pytest.approx(expected)


def train_message(node: int, server_round: int = 1) -> Message:
    return Message(RecordDict({P.CONFIG: ConfigRecord({"server-round": server_round})}), dst_node_id=node,
                   message_type="train")


def test_every_client_message_is_built_from_flowers_one_record_checked():
    set_identity()
    same = train_message(1).content
    shared = [Message(same, dst_node_id=n, message_type="train") for n in (1, 2)]  # as Flower's FedAvg sends
    assert shared_record(shared, "S") is same
    copies = [train_message(1), train_message(2)]  # equal content, one copy per node: fine too
    assert shared_record(copies, "S") is copies[0].content
    with pytest.raises(FlowerMismatch, match=r"^QuantAwareFedAvg: Flower's configure_train gave node 3 other "
                                             r"content than node 1, .*tested version"):
        shared_record([*copies, train_message(3, server_round=2)], "QuantAwareFedAvg")
    with pytest.raises(FlowerMismatch, match="sampled no node"):
        shared_record([], "QuantAwareFedAvg")


class PerNodeFedAvg(FedAvg):
    """A Flower strategy that sends each node its own train config."""

    def configure_train(self, server_round, arrays, config, grid):
        messages = list(super().configure_train(server_round, arrays, config, grid))
        for i, m in enumerate(messages):
            m.content = RecordDict({**m.content, P.CONFIG: ConfigRecord({**m.content[P.CONFIG], "node-rank": i})})
        return messages


def test_a_flower_strategy_with_per_node_content_is_refused_not_averaged_away():
    cfg = make_config(*TINY)
    setup, plan = setup_and_plan(cfg)
    strategy = type("QuantAwarePerNodeFedAvg", (QuantAwareMixin, PerNodeFedAvg), {})(plan=plan, server_name="fedavg")
    model = build_quantized_model(setup.model, federated_data(setup.data).data, seed=cfg["seed"])
    with pytest.raises(FlowerMismatch, match="QuantAwarePerNodeFedAvg: Flower's configure_train gave node"):
        strategy.start(grid=InProcessGrid(setup, 3), initial_arrays=ArrayRecord(float_state(model)), num_rounds=1,
                       train_config=train_config(cfg))


def test_the_config_checker_knows_every_server_and_dp_wrapper_flower_has():
    """fedquant.federation.aggregators (Flower-free, for the config checker) names what
    strategies/ builds: every server, each DP wrapper's options; Krum and Bulyan retry rounds with
    fewer replies than their rule needs (2f + 3, 4f + 3)."""
    from fedquant.federation import aggregators as A
    from strategies import SERVERS, build_strategy, server_options
    from strategies.privacy import dp_options

    assert tuple(SERVERS) == A.SERVERS and set(A.MEAN_SERVERS) | set(A.ROBUST_SERVERS) < set(SERVERS)
    assert dp_options() == {mode: list(names) for mode, names in A.DP_OPTIONS.items()}
    options = server_options()
    assert "num_malicious_nodes" in options["krum"] and "num_nodes_to_select" in options["multikrum"]
    assert not {"selection_rule", "train_loss_key", "arrayrecord_key"} & {o for v in options.values() for o in v}
    plan = TrainingPlan("fedavg", "fixed", parse_settings(["fp"], "b"), 10, 8, 0, [])
    assert build_strategy("krum", plan, num_malicious_nodes=2).retry.min_replies == 7
    assert build_strategy("bulyan", plan, min_replies=8, num_malicious_nodes=1).retry.min_replies == 8
    assert build_strategy("qfedavg", plan, client_lr=0.05).client_learning_rate == 0.05
