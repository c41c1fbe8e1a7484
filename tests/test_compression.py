"""The uplink codec: exact bit packing, the b-bit grid, unbiased stochastic rounding, exact bytes."""

from __future__ import annotations

import math

import pytest
import torch

from fedquant.federation.compression import (
    Codec,
    decode_state,
    dequantize,
    encode_state,
    expected_bytes,
    pack_bits,
    payload_bytes,
    quantize,
    unpack_bits,
)


def test_packing_writes_the_low_bit_first_stream():
    # 1 -> bits 1,0; 2 -> 0,1; 3 -> 1,1; 0 -> 0,0: stream 1001 1100, byte 1 + 8 + 16 + 32 = 57
    assert pack_bits(torch.tensor([1, 2, 3, 0]), 2).tolist() == [57]
    assert pack_bits(torch.tensor([5]), 3).tolist() == [5]
    assert pack_bits(torch.tensor([255, 1]), 9).tolist() == [255, 2, 0]  # 18 bits -> 3 bytes


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 7, 8, 11, 16])
def test_packing_round_trips_in_ceil_n_b_over_8_bytes(bits):
    q = torch.randint(0, 2 ** bits, (1001,), generator=torch.Generator().manual_seed(bits))
    packed = pack_bits(q, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(1001 * bits / 8)
    assert torch.equal(unpack_bits(packed, bits, 1001), q)


def test_nearest_rounding_lands_on_the_hand_computed_grid():
    # m = 0, M = 1, 2 bits: s = 1/3, t = [0, 0.3, 1.5, 3] -> round half to even [0, 0, 2, 3]
    q, scale, offset = quantize(torch.tensor([0.0, 0.1, 0.5, 1.0]), Codec(2, "nearest"))
    assert q.tolist() == [0, 0, 2, 3] and scale.tolist() == [pytest.approx(1 / 3)] and offset.tolist() == [0.0]
    assert dequantize(q, scale, offset, "per_tensor").tolist() == pytest.approx([0, 0, 2 / 3, 1])


def test_per_channel_groups_are_output_rows_and_a_constant_group_is_exact():
    x = torch.tensor([[1.0, 3.0], [2.0, 2.0]])
    q, scale, offset = quantize(x, Codec(1, "nearest", "per_channel"))
    assert q.tolist() == [[0, 1], [0, 0]] and scale.tolist() == [2.0, 1.0] and offset.tolist() == [1.0, 2.0]
    assert torch.equal(dequantize(q, scale, offset, "per_channel"), x)


def test_stochastic_rounding_is_unbiased():
    x = torch.randn(64, generator=torch.Generator().manual_seed(0))
    codec, draws = Codec(2, "stochastic"), 4000
    gen = torch.Generator().manual_seed(1)
    samples = torch.stack([dequantize(*quantize(x, codec, gen), "per_tensor") for _ in range(draws)])
    mean, sd = samples.mean(0), samples.std(0)
    scale = (x.max() - x.min()) / 3
    assert (sd <= 1.01 * scale / 2).all()  # a two-point distribution s apart (sample sd: a little slack)
    # each entry's mean within 4 standard errors of the input (all 64 at once: false alarm < 0.5%)
    assert ((mean - x).abs() <= 4 * sd / draws ** 0.5 + 1e-6).all()
    assert (mean - x).abs().max() > 0  # it is random, not the nearest grid point
    nearest = dequantize(*quantize(x, Codec(2, "nearest")), "per_tensor")
    assert (nearest - x).abs().mean() > 10 * (mean - x).abs().mean()  # nearest is biased per entry


def test_a_states_payload_is_the_hand_count_and_decodes_within_half_a_step():
    from types import SimpleNamespace

    from fedquant.models import build_model

    state = build_model("cnn", SimpleNamespace(image_shape=(1, 28, 28), num_classes=10)).state_dict()
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    floating = {k: v.is_floating_point() for k, v in state.items()}
    for codec in (Codec(), Codec(4, "nearest", "per_channel"), Codec(2, "stochastic", "per_tensor"), Codec(8)):
        arrays = encode_state(state, codec, torch.Generator().manual_seed(0))
        assert payload_bytes(arrays) == expected_bytes(shapes, codec, floating)
        decoded = decode_state(arrays, state, codec)
        assert decoded.keys() == state.keys()
        for k, v in state.items():
            assert decoded[k].shape == v.shape and decoded[k].dtype == v.dtype
            if codec.off or not v.is_floating_point():
                assert torch.equal(decoded[k], v)
            elif codec.rounding == "nearest":
                step = (v.max() - v.min()) / (2 ** codec.bits - 1)
                assert (decoded[k] - v).abs().max() <= step / 2 + 1e-6
    conv = shapes["0.weight"] if "0.weight" in shapes else next(s for s in shapes.values() if len(s) == 4)
    assert expected_bytes({"w": conv}, Codec(4, granularity="per_channel")) == \
        math.ceil(math.prod(conv) * 4 / 8) + 8 * conv[0]


def _states(seed: int = 0) -> tuple[dict, dict]:
    g = torch.Generator().manual_seed(seed)
    received = {"w": torch.randn(4, 3, generator=g), "b": torch.randn(4, generator=g),
                "n": torch.tensor(7, dtype=torch.int64)}
    trained = {"w": received["w"] + 0.01 * torch.randn(4, 3, generator=g),
               "b": received["b"] + 0.01 * torch.randn(4, generator=g), "n": torch.tensor(9, dtype=torch.int64)}
    return received, trained


def test_uplink_off_sends_the_trained_float32_state_unchanged():
    from fedquant.federation.uplink import Uplink, client_arrays, server_state

    received, trained = _states()
    arrays, residual = client_arrays(trained, received, Uplink(), None, None)
    assert residual is None and all(torch.equal(arrays[k], trained[k]) for k in trained)
    assert all(torch.equal(server_state(arrays, received, Uplink())[k], trained[k]) for k in trained)


def test_an_update_on_the_grid_is_added_to_what_the_server_sent():
    from fedquant.federation.uplink import Uplink, client_arrays, server_state

    received, trained = _states()
    uplink = Uplink(Codec(4, "nearest"), "update")
    arrays, _ = client_arrays(trained, received, uplink, None, None)
    model = server_state(arrays, received, uplink)
    update = trained["w"] - received["w"]
    step = (update.max() - update.min()) / 15
    assert (model["w"] - trained["w"]).abs().max() <= step / 2 + 1e-6  # the update's grid, not the weights'
    assert model["n"].item() == 9 and model["n"].dtype == torch.int64


def test_error_feedback_carries_what_the_grid_dropped_into_the_next_update():
    from fedquant.federation.uplink import Uplink, client_arrays, server_state

    received, trained = _states()
    uplink = Uplink(Codec(2, "nearest"), "update", error_feedback=True)
    arrays, residual = client_arrays(trained, received, uplink, None, None)
    sent = server_state(arrays, received, uplink)
    # e = u - C(u): what the server got plus the residual is exactly the client's update
    assert torch.allclose(sent["w"] - received["w"] + residual["w"], trained["w"] - received["w"], atol=1e-7)
    arrays2, _ = client_arrays(trained, received, uplink, residual, None)
    assert not torch.equal(arrays2["w|q"], arrays["w|q"]) or not torch.equal(arrays2["w|offset"], arrays["w|offset"])
    assert set(residual) == {"w", "b"}  # floating entries only


def test_the_residual_store_reads_the_newest_earlier_round_and_keeps_what_a_resume_needs(tmp_path):
    from fedquant.federation.uplink import ResidualStore

    store = ResidualStore(tmp_path, 5)
    assert store.load(3) is None
    for r in (2, 7, 12):
        store.save(r, {"w": torch.full((2,), float(r))}, keep_from=10)
    assert store.load(12)["w"].tolist() == [7.0, 7.0] and store.load(13)["w"].tolist() == [12.0, 12.0]
    assert sorted(p.name for p in (tmp_path / "5").iterdir()) == ["r12.pt", "r7.pt"]  # r2 superseded before 10
    store.save(16, {"w": torch.zeros(2)}, keep_from=15)
    assert sorted(p.name for p in (tmp_path / "5").iterdir()) == ["r12.pt", "r16.pt"]
