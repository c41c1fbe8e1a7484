"""Oscillation dampening and iterative weight freezing (Nagel et al. 2022), client and server side."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from fedquant.federation.freezing import FreezeState, OscillationPlan, clip_key
from fedquant.quant import QuantConfig, quantize_model
from fedquant.quant.oscillation import (
    FrozenWeights,
    OscillationCounter,
    dampening_loss,
    integer_weights,
    tracked_layers,
)


def one_weight_layer(w: float) -> nn.Module:
    """``y = q(w) x_0 + q(1) x_1`` at 2 bits (narrow grid {-1, 0, 1}, scale 1 from the fixed 1.0)."""
    layer = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[w, 1.0]]))
    return quantize_model(layer, QuantConfig(weight_bits=2, act_bits=None))


def train_towards(target: float, dampen: float, steps: int = 120) -> tuple[OscillationCounter, list[float]]:
    """SGD on ``(q(w) - target)^2`` with the input (1, 0): the task's optimum lies between two grid
    points, so under the straight-through estimator ``w`` keeps crossing the threshold 0.5."""
    model = one_weight_layer(0.45)
    layers = tracked_layers(model)
    counter = OscillationCounter(layers, bits=2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.tensor([[1.0, 0.0]])
    history = []
    for _ in range(steps):
        loss = (model(x).squeeze() - target) ** 2
        if dampen:
            loss = loss + dampen * dampening_loss(layers)
        opt.zero_grad()
        loss.backward()
        opt.step()
        counter.update()
        history.append(float(counter.counts["weight"][0, 0]))
    return counter, history


def test_one_weight_oscillates_without_dampening_and_settles_with_it():
    plain, plain_history = train_towards(0.6, dampen=0.0)
    damped, damped_history = train_towards(0.6, dampen=2.0)
    # without: w crosses 0.5 over and over (0 <-> 1), an oscillation on most pairs of steps
    assert plain_history[-1] - plain_history[59] >= 20
    assert plain.counts["weight"][0, 1] == 0  # the fixed weight never moves
    # with: the pull towards the bin centre, 2 lambda (w - q), against the task's 2 (q - 0.6),
    # holds w inside the bin of 0 at the fixed point w = 0.6 / lambda = 0.3: no oscillation later on
    assert damped_history[-1] - damped_history[59] == 0
    assert damped.layers["weight"].weight[0, 0].item() == pytest.approx(0.3, abs=1e-3)


def test_counter_counts_only_reversals_of_the_integer():
    """Integers 0 1 0 1 1 2 1: moves +1 (first: no earlier direction), -1 (reversal), +1 (reversal),
    none, +1 (same direction), -1 (reversal): 3 oscillations; integer sum 6 over 6 updates."""
    model = one_weight_layer(0.0)
    counter = OscillationCounter(tracked_layers(model), bits=3)  # grid {-3..3}, scale 1/3
    for k in (1, 0, 1, 1, 2, 1):
        with torch.no_grad():
            model.weight[0, 0] = k / 3
        counter.update()
    assert counter.counts["weight"].tolist() == [[3.0, 0.0]]
    assert counter.integer_sums["weight"].tolist() == [[6.0, 18.0]]
    assert counter.steps == 6


def test_a_skipped_float_step_is_neither_a_move_nor_a_step():
    """Integers 0 1 | 0 (float step, skipped) | 1 2: counted moves +1, +1, +1 (no reversal; without
    the skip, 0 -> 1 after 1 -> 0 would be one); sums over the 3 counted updates only."""
    model = one_weight_layer(0.0)
    counter = OscillationCounter(tracked_layers(model), bits=3)
    for k, counted in ((1, True), (0, False), (1, True), (2, True)):
        with torch.no_grad():
            model.weight[0, 0] = k / 3
        counter.update() if counted else counter.skip()
    assert counter.counts["weight"].tolist() == [[0.0, 0.0]]
    assert counter.integer_sums["weight"].tolist() == [[4.0, 9.0]]
    assert counter.steps == 3


def test_dampening_loss_matches_its_formula():
    torch.manual_seed(0)
    layer = quantize_model(nn.Linear(5, 4), QuantConfig(weight_bits=3, act_bits=None))
    w = layer.weight.detach().double().numpy()
    s = np.abs(w).max(axis=1, keepdims=True) / 3  # per channel, grid [-3, 3]
    expected = ((np.clip(np.round(w / s), -3, 3) * s - np.clip(w, -3 * s, 3 * s)) ** 2).sum()
    assert dampening_loss(tracked_layers(layer)).item() == pytest.approx(expected, rel=1e-5)
    assert torch.equal(integer_weights(layer, 3), torch.from_numpy(np.clip(np.round(w / s), -3, 3)).float())


def test_frozen_entries_keep_their_values_through_training():
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    mask = torch.zeros(3, 4, dtype=torch.bool)
    mask[0, 1] = mask[2, 3] = True
    before = model.weight.detach().clone()
    keep = FrozenWeights(model, {"weight": mask})
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    for _ in range(5):
        model(torch.randn(8, 4)).pow(2).sum().backward()
        opt.step()
        keep.restore()
    assert torch.equal(model.weight[mask], before[mask])
    assert not torch.equal(model.weight[~mask], before[~mask])


def test_server_freezing_matches_its_formulas():
    """Two rounds of pooled statistics, checked against the design's formulas by hand: F_1 = mu f_1,
    F_2 = mu f_2 + (1 - mu) F_1; an entry freezes when F > f_th, in the bin of k = round(sum z / sum T):
    its weight clamped into [(k - 1/4) s_ref, (k + 1/4) s_ref]."""
    plan = OscillationPlan(0.0, freeze_threshold=0.1, freeze_momentum=0.5, ref_bits=2, num_rounds=10)
    state = FreezeState(plan)
    w = torch.tensor([[0.9, -0.2, 0.4, 0.1]])  # s_ref = 0.9 / 1 at 2 bits (narrow grid {-1, 0, 1})
    counts = torch.tensor([[0.0, 3.0, 5.0, 1.0]])  # over 20 pooled steps: f_1 = 0, .15, .25, .05
    sums = torch.tensor([[20.0, -14.0, 6.0, 2.0]])  # mean integers 1, -0.7, 0.3, 0.1
    clips = {"w": torch.ones(1)}
    state.update({"w": counts}, {"w": sums}, 20, {"w": w}, clips)
    # F_1 = 0.5 f_1 = 0, .075, .125, .025: only entry 2 passes 0.1; k = round(0.3) = 0, so its 0.4
    # is clamped into [-0.225, 0.225]
    assert torch.allclose(state.frequency["w"], torch.tensor([[0.0, 0.075, 0.125, 0.025]]))
    assert state.frozen["w"].tolist() == [[False, False, True, False]]
    assert state.values["w"][0, 2].item() == pytest.approx(0.225)
    state.update({"w": torch.tensor([[0.0, 3.0, 0.0, 0.0]])}, {"w": torch.tensor([[20.0, -16.0, 0.0, 0.0]])}, 20, {"w": w}, clips)
    # F_2 = 0.5 (0, .15, 0, 0) + 0.5 F_1 = 0, .1125, .0625, .0125: entry 1 freezes with k = round(-0.8) = -1,
    # its -0.2 clamped into [-1.125, -0.675]
    assert torch.allclose(state.frequency["w"], torch.tensor([[0.0, 0.1125, 0.0625, 0.0125]]))
    assert state.frozen["w"].tolist() == [[False, True, True, False]]  # entry 2 stays frozen below f_th
    enforced = state.enforce({"w": torch.ones(1, 4)})["w"]
    assert torch.allclose(enforced, torch.tensor([[1.0, -0.675, 0.225, 1.0]]))
    assert state.frozen_share() == 0.5


@pytest.mark.parametrize("granularity, clip", [("per_channel", [0.6, 0.8, 0.99999976]), ("per_tensor", [0.7])])
def test_server_reference_scale_is_the_quantizers_scale_with_its_clip(granularity, clip):
    """The server freezes on an aggregated state dict: its reference scale must be the weight
    quantizer's scale at ``ref_bits``, clip included (0.99999976 is ``clip = 1`` after FedAvg),
    s = clip * max|w| / (2^(b-1) - 1) by hand; and it freezes in the bins of that scale."""
    torch.manual_seed(0)
    layer = quantize_model(nn.Linear(5, 3), QuantConfig(weight_bits=4, act_bits=None, weight_granularity=granularity))
    layer.weight_quantizer.set_clip(torch.tensor(clip))
    state = {k: v.detach().clone() for k, v in layer.state_dict().items()}
    w, c = state["weight"], state[clip_key("weight")]
    plan = OscillationPlan(0.0, freeze_threshold=0.1, freeze_momentum=1.0, ref_bits=3, num_rounds=2,
                           per_channel=granularity == "per_channel")
    wd = w.double().numpy()
    absmax = np.abs(wd).max(axis=1, keepdims=True) if granularity == "per_channel" else np.abs(wd).max()
    by_hand = np.array(clip).reshape(-1, 1) * absmax / 3  # 3 bits: top grid point 2^2 - 1 = 3
    s_ref = plan.reference_scale(w, c)
    assert np.allclose(s_ref.double().numpy(), by_hand, rtol=1e-6, atol=0)
    assert not np.allclose(s_ref.double().numpy(), absmax / 3, rtol=1e-6, atol=0)  # clip-free: off
    assert torch.equal(s_ref, layer.weight_quantizer.scale_at(layer.weight, 3))
    # every entry oscillates: each freezes in the bin of its integer on the clipped reference grid
    integers = integer_weights(layer, 3)
    freeze = FreezeState(plan)
    freeze.update({"weight": torch.full_like(w, 5.0)}, {"weight": 10 * integers}, 10, {"weight": w}, {"weight": c})
    s = torch.from_numpy(by_hand)
    expected = torch.minimum(torch.maximum(w.double(), (integers.double() - 0.25) * s), (integers.double() + 0.25) * s)
    assert freeze.frozen["weight"].all()
    assert torch.allclose(freeze.values["weight"].double(), expected, rtol=1e-6, atol=0)


def test_dampening_weight_is_cosine_annealed_from_zero():
    plan = OscillationPlan(0.02, 0.0, 0.5, ref_bits=2, num_rounds=5)
    assert [plan.dampen_at(r) for r in (1, 3, 5)] == pytest.approx([0.0, 0.01, 0.02])
    assert plan.dampen_at(2) == pytest.approx(0.02 * (1 - math.cos(math.pi / 4)) / 2)


def test_frozen_weights_survive_a_server_optimizer():
    """FedAdam's moments would move a frozen entry; the server writes the frozen values over its
    aggregate."""
    from tests.test_strategies import run_inprocess

    arrays, strategy, _ = run_inprocess("client.freeze_threshold=0.001", "num_rounds=3", server="fedadam", eta=0.05)
    frozen, values = strategy.freeze.frozen["3.weight"], strategy.freeze.values["3.weight"]
    assert 0 < int(frozen.sum()) < frozen.numel()
    assert torch.equal(arrays["3.weight"][frozen], values[frozen])


def test_the_client_keeps_frozen_entries_at_the_values_it_was_sent():
    """A training message carrying frozen masks, replayed through the real client handler: the
    reply's masked entries are the sent values (before any server enforcement), the others moved."""
    from flwr.app import ArrayRecord

    from clients import handle_train
    from fedquant.federation import protocol as P
    from tests.helpers import TINY, make_config
    from tests.test_strategies import run_inprocess, setup_and_plan

    _, strategy, grid = run_inprocess("client.freeze_threshold=0.001", "num_rounds=2")
    late = [m for m in grid.sent if P.FROZEN in m.content.array_records]
    assert late, "the second round's messages carry the masks frozen after round 1"
    msg = late[0]
    mask = msg.content.array_records[P.FROZEN]["3.weight"].numpy().astype(bool)
    sent = msg.content.array_records[P.ARRAYS]["3.weight"].numpy()
    setup, _ = setup_and_plan(make_config(*TINY, "client.freeze_threshold=0.001"))
    got = handle_train(setup, msg).content.array_records[P.ARRAYS]["3.weight"].numpy()
    assert 0 < mask.sum() < mask.size
    assert (got[mask] == sent[mask]).all() and (got[~mask] != sent[~mask]).any()
    assert isinstance(msg.content.array_records[P.FROZEN], ArrayRecord)


def test_one_weight_stops_oscillating_once_the_server_freezes_it():
    """The synthetic case again, federated: a client counts 40 steps, the server pools the counts
    and freezes the weight inside the bin of its most frequent integer; training it further with
    the frozen mask moves nothing and counts no oscillation."""
    model = one_weight_layer(0.45)
    layers = tracked_layers(model)
    x, opt = torch.tensor([[1.0, 0.0]]), torch.optim.SGD(model.parameters(), lr=0.1)

    def train(steps: int, keep: FrozenWeights | None = None) -> OscillationCounter:
        counter = OscillationCounter(layers, bits=2)
        for _ in range(steps):
            opt.zero_grad()
            ((model(x).squeeze() - 0.6) ** 2).backward()
            opt.step()
            if keep is not None:
                keep.restore()
            counter.update()
        return counter

    first = train(40)
    assert first.counts["weight"][0, 0] >= 10
    state = FreezeState(OscillationPlan(0.0, freeze_threshold=0.1, freeze_momentum=1.0, ref_bits=2, num_rounds=2))
    state.update(first.counts, first.integer_sums, first.steps, {"weight": model.weight.detach().clone()},
                 {"weight": model.state_dict()[clip_key("weight")]})
    assert state.frozen["weight"].tolist() == [[True, False]]
    with torch.no_grad():  # the next round's global model carries the frozen value
        model.weight.copy_(state.enforce({"weight": model.weight.detach()})["weight"])
    frozen_value = model.weight[0, 0].item()
    # w hovered around the threshold 0.5 (s_ref = 1 at 2 bits): clamped to 0.25 (bin 0) or 0.75 (bin 1)
    assert frozen_value in (0.25, 0.75)
    second = train(60, FrozenWeights(model, state.frozen))
    assert second.counts["weight"].sum() == 0 and model.weight[0, 0].item() == frozen_value
