"""Compressed communication on the server (:mod:`fedquant.federation.uplink` states the design):
the model broadcast on the downlink grid, each reply's arrays turned back into the client's model
before Flower aggregates, and the exact payload bytes both ways."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from flwr.app import ArrayRecord

from fedquant.federation import protocol as P
from fedquant.federation.compression import OFF, Codec
from fedquant.federation.uplink import Uplink, broadcast, server_state
from fedquant.models.width import extract

Templates = Callable[[float], Mapping[str, torch.Tensor]]  # width -> the sub-model's state (shapes, dtypes)


@dataclass
class Links:
    """The run's uplink and downlink, and what decoding a sub-model needs."""

    uplink: Uplink = field(default_factory=Uplink)
    downlink: Codec = field(default_factory=lambda: Codec(OFF, "nearest"))
    templates: Templates | None = None  # needed with width profiles and a compressed uplink
    checkpoint_every: int = 0  # the run's checkpoint.every: which residuals a resume may need

    @property
    def off(self) -> bool:
        return self.uplink.codec.off and self.downlink.off

    def keep_from(self, server_round: int) -> int:
        """The newest checkpoint round before ``server_round`` (a resume starts at or after it);
        without checkpoints the previous round."""
        every = self.checkpoint_every
        return (server_round - 1) // every * every if every else server_round - 1


def record_bytes(*records: ArrayRecord | None) -> int:
    """The payload of array records: every array's raw contents, ``numel * itemsize`` (no framing:
    Flower's serialized form adds a numpy header per array)."""
    return sum(math.prod(a.shape) * np.dtype(a.dtype).itemsize for r in records if r is not None for a in r.values())


def downlink(global_arrays: ArrayRecord, links: Links) -> tuple[ArrayRecord, dict[str, torch.Tensor] | None]:
    """The record every client is sent this round, and the model a client decodes from it (None
    when the uplink is off: the server then needs no reference to decode replies)."""
    if links.downlink.off:
        return global_arrays, None if links.uplink.codec.off else global_arrays.to_torch_state_dict()
    arrays, received = broadcast(global_arrays.to_torch_state_dict(), links.downlink)
    return ArrayRecord(arrays), received


def link_config(links: Links, server_round: int, keep_from: int) -> dict:
    """The train config entries that tell a client how to decode and what to send."""
    up = links.uplink
    return {P.ROUND: server_round, P.DOWNLINK_BITS: links.downlink.bits,
            P.DOWNLINK_GRANULARITY: links.downlink.granularity, P.UPLINK_BITS: up.codec.bits,
            P.UPLINK_ROUNDING: up.codec.rounding, P.UPLINK_GRANULARITY: up.codec.granularity,
            P.UPLINK_SEND: up.send, P.ERROR_FEEDBACK: up.error_feedback, P.STATE_KEEP_FROM: keep_from}


def decode_reply(arrays: ArrayRecord, received: Mapping[str, torch.Tensor], width: float,
                 links: Links) -> dict[str, torch.Tensor]:
    """The client's model from its reply's compressed ``arrays`` (``received``: the model clients
    decoded this round; a sub-model client's is cut to its ``width`` with ``links.templates``, which
    :class:`~strategies.validation.ReplyCheck` requires when the plan has widths)."""
    reference = dict(received) if width >= 1 else extract(received, links.templates(width))
    return server_state(arrays.to_torch_state_dict(), reference, links.uplink)
