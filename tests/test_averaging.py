"""Server-side averaging of the global model over rounds (EMA, SWA), exact under resume."""

from __future__ import annotations

import pytest
import torch

from fedquant.experiment.averaging import WeightAverage
from fedquant.federation.schedule import LRSchedule


def states(n: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [{"w": torch.randn(3, 2, generator=g), "b": torch.randn(2, generator=g)} for _ in range(n)]


@pytest.mark.parametrize(("kind", "start"), [("ema", 1), ("ema", 3), ("swa", 1), ("swa", 2)])
def test_averages_match_their_formulas(kind, start):
    ws = states(5)
    avg = WeightAverage(kind, decay=0.7, start=start)
    for r, w in enumerate(ws, 1):
        out = avg.update(r, w)
        used = ws[start - 1:r]
        if r < start:
            assert out is w
            continue
        if kind == "swa":
            expected = {k: torch.stack([u[k].double() for u in used]).mean(0) for k in w}
        else:
            expected = {k: used[0][k].double() for k in w}
            for u in used[1:]:
                expected = {k: 0.7 * expected[k] + 0.3 * u[k].double() for k in w}
        for k in w:
            assert out[k].dtype == torch.float32
            assert torch.allclose(out[k].double(), expected[k], atol=1e-6)


def test_a_checkpointed_average_continues_exactly():
    ws = states(6)
    straight = WeightAverage("ema", 0.8)
    for r, w in enumerate(ws, 1):
        final = straight.update(r, w)
    first = WeightAverage("ema", 0.8)
    for r, w in enumerate(ws[:3], 1):
        first.update(r, w)
    resumed = WeightAverage("ema", 0.8)
    resumed.load_state_dict(first.state_dict())
    assert torch.equal(resumed.update(3, ws[2])["w"], first.current()["w"])  # the restored round again: unchanged
    for r, w in enumerate(ws[3:], 4):
        out = resumed.update(r, w)
    assert all(torch.equal(out[k], final[k]) for k in final)


def test_no_average_is_the_model_itself():
    w = states(1)[0]
    assert WeightAverage().update(1, w) is w
    with pytest.raises(ValueError, match="eval.average='mean' is not valid"):
        WeightAverage("mean")


def test_lr_schedules_match_their_formulas():
    cos = LRSchedule("cosine", lr=0.1, num_rounds=10, min_factor=0.2)
    assert cos(1) == pytest.approx(0.1) and cos(6) == pytest.approx(0.02 + 0.08 * 0.5)
    step = LRSchedule("step", lr=0.1, step_rounds=3, gamma=0.5)
    assert [step(r) for r in range(1, 8)] == pytest.approx([0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.025])
    assert LRSchedule("constant", lr=0.3)(50) == 0.3
    with pytest.raises(ValueError, match="client.lr_schedule='linear' is not valid"):
        LRSchedule("linear")
