"""Hostile clients and the server's reply check, in process: seeded attackers, what each attack
sends, every malformation rejected with its reason while the round aggregates the others, the
median under a sign-flipping attacker, and central DP's clipping bound."""

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord

from fedquant.experiment.workspace import build_quantized_model, federated_data
from fedquant.federation import protocol as P
from fedquant.federation.attacks import INFLATE, MALFORMATIONS, NOISE_SEED, Attack, AttackPlan
from fedquant.federation.compression import OFF, Codec, encode_state
from fedquant.federation.reply_check import encoded_layout, layout
from fedquant.federation.uplink import Uplink
from fedquant.models.state import float_state
from fedquant.streams import Stream, stream_rng
from strategies import Links
from tests.helpers import TINY, make_config
from tests.inprocess import InProcessGrid, recording_strategy, train_config
from tests.test_strategies import run_inprocess, setup_and_plan


class RecordingGrid(InProcessGrid):
    """Keeps every reply's arrays and example count as the client sent them, by (round, client)."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.replies: dict[tuple[int, int], tuple[dict, int]] = {}

    def _call(self, msg):
        reply = super()._call(msg)
        if not reply.has_error():
            cfg = msg.content.config_records[P.CONFIG]
            arrays = {k: torch.from_numpy(a.numpy().copy()) for k, a in reply.content.array_records[P.ARRAYS].items()}
            self.replies[int(cfg["server-round"]), int(cfg[P.PARTITION])] = (
                arrays, reply.content.metric_records[P.METRICS][P.NUM_EXAMPLES])
        return reply


class Forced:
    """An attack plan whose one attacker is ``client``, every round."""

    def __init__(self, client: int, attack: Attack) -> None:
        self.client, self.the_attack = client, attack

    def attack(self, seed, server_round, client):
        return self.the_attack if client == self.client else None


def run(*overrides, server="fedavg", attack=None, target=None, compressed=False, **options):
    """One round of a TINY run in process; returns (aggregate, strategy, grid, initial model)."""
    cfg = make_config(*TINY, "num_rounds=1", *overrides)
    setup, plan = setup_and_plan(cfg)
    if attack is not None:
        plan.attacks = Forced(target, attack)
    fed = federated_data(setup.data)
    links = Links(Uplink.from_config(cfg["uplink"]), Codec(OFF, "nearest")) if compressed else None
    strategy = recording_strategy(server, plan, partition_sizes=[len(c) for c in fed.clients], links=links, **options)
    initial = float_state(build_quantized_model(setup.model, fed.data, seed=cfg["seed"]))
    grid = RecordingGrid(setup, cfg["clients_per_round"])
    result = strategy.start(grid=grid, initial_arrays=ArrayRecord(initial), num_rounds=1,
                            train_config=train_config(cfg))
    return result.arrays.to_torch_state_dict(), strategy, grid, initial


@pytest.fixture(scope="module")
def honest():
    """The honest round every attacked round is compared with; its second client is the attacker."""
    state, strategy, grid, initial = run()
    clients = strategy.plan.sample_clients(1)
    return state, grid.replies, initial, clients, clients[1]


def weighted_mean(replies: dict, clients: list[int]) -> dict:
    """FedAvg by hand (float64): the example-weighted mean of the clients' replies."""
    total = sum(replies[1, c][1] for c in clients)
    keys = replies[1, clients[0]][0]
    return {k: sum(replies[1, c][0][k].double() * replies[1, c][1] for c in clients) / total for k in keys}


def flat(state: dict, keys) -> torch.Tensor:
    return torch.cat([state[k].reshape(-1).double() for k in keys])


@pytest.mark.parametrize("malformation", MALFORMATIONS)
def test_a_malformed_reply_is_rejected_with_its_reason_and_the_round_aggregates_the_others(honest, malformation):
    _, replies, initial, clients, target = honest
    state, strategy, _, _ = run(attack=Attack("malformed", malformation=malformation), target=target)
    first, n = next(iter(initial)), replies[1, target][1]
    reason = {"missing_array": f"missing array '{first}'",
              "extra_array": f"unexpected array '{first}.extra'",
              "wrong_shape": f"array '{first}' has shape ({initial[first].numel() - 1},), where "
                             f"{tuple(initial[first].shape)} was sent",
              "wrong_dtype": f"array '{first}' has dtype float64, where float32 is expected",
              "non_finite": f"non-finite values (NaN/Inf) in array '{first}'",
              "negative_examples": f"num-examples={-n} is not a positive integer",
              "inflated_examples": f"num-examples={n * INFLATE} exceeds the client's partition size ({n})"}[malformation]
    report = strategy.reports[1]
    assert report.failures == [f"client {target}: rejected reply: {reason}"]
    others = [c for c in clients if c != target]
    assert [c.partition for c in report.clients] == others
    expected = weighted_mean(replies, others)  # computed here, from the honest run's replies
    assert list(state) == list(initial)
    assert all(torch.allclose(state[k].double(), expected[k], atol=1e-6) for k in initial)


def test_a_malformed_compressed_reply_is_checked_as_encoded(honest):
    _, _, initial, clients, target = honest
    _, strategy, grid, _ = run("uplink.bits=4", attack=Attack("malformed", malformation="wrong_shape"), target=target,
                               compressed=True)
    first = next(iter(initial))
    packed = grid.replies[1, target][0][first + "|q"]  # the malformed (flattened, one short) packed integers
    assert strategy.reports[1].failures == [
        f"client {target}: rejected reply: array '{first}|q' has shape {tuple(packed.shape)}, where "
        f"({(initial[first].numel() * 4 + 7) // 8},) was sent"]
    assert [c.partition for c in strategy.reports[1].clients] == [c for c in clients if c != target]


@pytest.mark.parametrize("granularity", ["per_tensor", "per_channel"])
def test_the_expected_layout_of_a_compressed_reply_is_what_a_client_encodes(honest, granularity):
    initial = honest[2]
    for codec in (Codec(3, "nearest", granularity), Codec(OFF)):
        assert encoded_layout(layout(initial), codec) == layout(encode_state(initial, codec))


@pytest.mark.parametrize("kind", ["sign_flip", "scale", "noise"])
def test_an_attack_changes_what_is_sent_exactly_as_defined(honest, kind):
    _, replies, w, _, target = honest
    w_k = replies[1, target][0]
    _, strategy, grid, _ = run(attack=Attack(kind, scale=3.0, std=0.5), target=target)
    sent = grid.replies[1, target][0]
    if kind == "sign_flip":  # w - (w_k - w), i.e. 2w - w_k
        expected = {k: w[k] - (w_k[k] - w[k]) for k in w}
        assert all(torch.allclose(sent[k], 2 * w[k] - w_k[k], atol=1e-6) for k in w)
    elif kind == "scale":  # w + s (w_k - w)
        expected = {k: w[k] + 3.0 * (w_k[k] - w[k]) for k in w}
    else:  # w_k + N(0, sigma^2), from the client's round seed
        generator = torch.Generator().manual_seed(strategy.plan.client_seed(1, target) + NOISE_SEED)
        expected = {k: w_k[k] + 0.5 * torch.randn(w_k[k].shape, generator=generator) for k in w}
    assert all(torch.equal(sent[k], expected[k]) for k in w)
    assert not strategy.reports[1].failures and len(strategy.reports[1].clients) == 3  # it speaks the protocol


def test_median_over_five_clients_with_one_sign_flipper_stays_near_the_honest_median():
    five = ("clients_per_round=5",)
    median, _, grid, w = run(*five, server="fedmedian")
    clients = sorted(c for _, c in grid.replies)
    target = clients[0]
    attacked, strategy, _, _ = run(*five, server="fedmedian", attack=Attack("sign_flip"), target=target)
    mean, _, _, _ = run(*five)
    mean_attacked, _, _, _ = run(*five, attack=Attack("sign_flip"), target=target)
    keys = list(w)
    # per coordinate, 4 honest values and 1 attacker: the median is between the 2nd and 3rd honest value
    honest = torch.stack([flat(grid.replies[1, c][0], keys) for c in clients if c != target]).sort(dim=0).values
    x = flat(attacked, keys)
    assert bool(((x >= honest[1] - 1e-6) & (x <= honest[2] + 1e-6)).all())
    median_shift = float((x - flat(median, keys)).norm() / (flat(median, keys) - flat(w, keys)).norm())
    mean_shift = float((flat(mean_attacked, keys) - flat(mean, keys)).norm() / (flat(mean, keys) - flat(w, keys)).norm())
    assert median_shift < 0.2 < mean_shift  # 0.10 and 0.31 of the honest step: the mean follows the attacker
    assert len(strategy.reports[1].clients) == 5


def test_attackers_are_drawn_from_their_own_stream_and_told_in_their_message():
    plan = AttackPlan("scale", 0.3, scale=10.0)
    picks = [[plan.attack(0, r, c) is not None for c in range(10)] for r in range(1, 21)]
    assert picks == [[plan.attack(0, r, c) is not None for c in range(10)] for r in range(1, 21)]
    assert picks != [[plan.attack(1, r, c) is not None for c in range(10)] for r in range(1, 21)]
    assert picks == [[bool(stream_rng(0, Stream.ATTACK, r, c).random() < 0.3) for c in range(10)] for r in range(1, 21)]
    assert 0.2 < np.mean(picks) < 0.4
    kinds = {AttackPlan("malformed", 1.0).attack(0, r, c).malformation for r in range(1, 21) for c in range(10)}
    assert kinds == set(MALFORMATIONS)
    _, strategy, grid = run_inprocess("faults.attack=scale", "faults.attack_rate=0.5")
    for m in grid.sent:
        cfg = m.content.config_records[P.CONFIG]
        attack = strategy.plan.attack(int(cfg["server-round"]), int(cfg[P.PARTITION]))
        assert (P.ATTACK in cfg) == (attack is not None)
        if attack is not None:
            assert (cfg[P.ATTACK], cfg[P.ATTACK_SCALE]) == ("scale", 10.0)
    assert any(P.ATTACK in m.content.config_records[P.CONFIG] for m in grid.sent)


def test_server_side_clipping_bounds_the_step_and_its_noise_is_seeded():
    """``strategy.dp=server_fixed``: every update clipped to norm C, so the mean moves at most C;
    Flower's noise drawn from a per-round seed (numpy's global generator left as it was)."""
    clipped, strategy, _, w = run(dp="server_fixed", dp_options={"noise_multiplier": 0.0, "clipping_norm": 0.01})
    keys = list(w)
    assert len(strategy.reports[1].clients) == 3
    assert float((flat(clipped, keys) - flat(w, keys)).norm()) <= 0.01 + 1e-6
    before = np.random.get_state()[1].copy()  # noqa: NPY002 - the global generator Flower draws from
    noisy, _, _, _ = run(dp="server_fixed", dp_options={"noise_multiplier": 1.0, "clipping_norm": 0.01})
    again, _, _, _ = run(dp="server_fixed", dp_options={"noise_multiplier": 1.0, "clipping_norm": 0.01})
    assert np.array_equal(np.random.get_state()[1], before)  # noqa: NPY002
    assert all(torch.equal(noisy[k], again[k]) for k in keys)
    assert float((flat(noisy, keys) - flat(clipped, keys)).std()) == pytest.approx(1.0 * 0.01 / 3, rel=0.05)


def test_honest_sub_model_replies_pass_the_check_whatever_precision_the_server_keeps():
    """Width clients reply with their sub-model, in float32, also after FedAdam made the global
    model float64 (NumPy 2 promotes its step): checked to fit inside the global shapes when the
    server has no sub-model template (tests build strategies without one)."""
    profiles = "strategy.profiles=[{name: a, share: 0.5, bits: [8]}, {name: b, share: 0.5, bits: [4], width: 0.5}]"
    state, strategy, _ = run_inprocess(profiles, "strategy=fedavg", server="fedadam", eta=0.01)
    assert next(iter(state.values())).dtype == torch.float64
    assert [len(r.clients) for r in strategy.reports.values()] == [3, 3]
    assert not any(r.failures for r in strategy.reports.values())
    assert {strategy.plan.width(c.partition) for r in strategy.reports.values() for c in r.clients} == {0.5, 1.0}
