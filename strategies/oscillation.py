"""Weight freezing on the server (``client.freeze_threshold``): the clients' oscillation records
taken out of their replies and pooled, the weights that oscillate too often frozen, and kept
frozen in the aggregate (:mod:`fedquant.federation.freezing` states the design)."""

from __future__ import annotations

import torch
from flwr.app import Array, ArrayRecord, Message

from fedquant.federation import protocol as P
from fedquant.federation.freezing import FreezeState, clip_key
from fedquant.federation.reports import RoundReport


def pop_oscillations(replies: list[Message]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], int]:
    """Remove each reply's oscillation record (Flower's aggregation accepts one ArrayRecord per
    reply) and return the counts and integer sums summed over the replies (by weight name) and
    the summed number of counted steps."""
    counts: dict[str, torch.Tensor] = {}
    sums: dict[str, torch.Tensor] = {}
    steps = 0
    for reply in replies:
        if P.OSCILLATIONS not in reply.content.array_records:
            continue
        record = reply.content.array_records[P.OSCILLATIONS]
        del reply.content[P.OSCILLATIONS]
        steps += int(reply.content.metric_records[P.METRICS][P.TRACKED_STEPS])
        for key, array in record.items():
            name, kind = key.rsplit("|", 1)
            target = counts if kind == "count" else sums
            value = torch.from_numpy(array.numpy()).double()
            target[name] = target[name] + value if name in target else value
    return counts, sums, steps


def freeze_oscillating(freeze: FreezeState, arrays: ArrayRecord, counts: dict[str, torch.Tensor],
                       integer_sums: dict[str, torch.Tensor], steps: int, report: RoundReport) -> None:
    """Update the freezing state with the round's pooled oscillation statistics, write the
    frozen values into the aggregate ``arrays``, in place, and add the oscillation rate and
    frozen share to ``report``. (Flower's FedAvgM keeps ``arrays`` itself as its model; FedOpt
    starts every round from the global model it is sent: neither holds another copy to correct.)"""
    weights = {k: torch.from_numpy(arrays[k].numpy()) for k in counts}
    clips = {k: torch.from_numpy(arrays[clip_key(k)].numpy()) for k in counts}
    freeze.update(counts, integer_sums, steps, weights, clips)
    current = {k: torch.from_numpy(arrays[k].numpy()) for k in freeze.frozen}
    arrays.update({k: Array(v.numpy()) for k, v in freeze.enforce(current).items()})
    frequency = freeze.frequency
    entries = sum(f.numel() for f in frequency.values())
    report.oscillation_rate = sum(float(f.sum()) for f in frequency.values()) / entries if entries and steps else None
    report.frozen_share = freeze.frozen_share()
