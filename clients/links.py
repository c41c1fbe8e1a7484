"""Compressed communication on the client (:mod:`fedquant.federation.uplink` states the design):
the broadcast decoded, the reply compressed, the error-feedback residual kept client-side."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from fedquant.federation import protocol as P
from fedquant.federation.compression import Codec, decode_state
from fedquant.federation.uplink import ResidualStore, Uplink, client_arrays

_ROUNDING_SEED = 7919  # the stochastic rounding's generator: the client's round seed plus this


def compressed(cfg: Mapping) -> bool:
    """Whether the server compresses this round's messages (it then sends the link keys)."""
    return P.UPLINK_BITS in cfg


def received_state(arrays: Mapping[str, torch.Tensor], cfg: Mapping, template: Mapping[str, torch.Tensor]
                   ) -> dict[str, torch.Tensor]:
    """The global model as decoded from the broadcast (``template``: the full model's state)."""
    codec = Codec(int(cfg[P.DOWNLINK_BITS]), "nearest", str(cfg[P.DOWNLINK_GRANULARITY]))
    return dict(arrays) if codec.off else decode_state(arrays, template, codec)


def reply_arrays(trained: Mapping[str, torch.Tensor], received: Mapping[str, torch.Tensor], cfg: Mapping,
                 client: int, state_dir: str | None) -> dict[str, torch.Tensor]:
    """What the client sends for its ``trained`` model; with error feedback its residual is read
    from and written to ``state_dir`` (this client's own store, never sent)."""
    uplink = Uplink(Codec(int(cfg[P.UPLINK_BITS]), str(cfg[P.UPLINK_ROUNDING]), str(cfg[P.UPLINK_GRANULARITY])),
                    str(cfg[P.UPLINK_SEND]), bool(cfg[P.ERROR_FEEDBACK]))
    generator = torch.Generator().manual_seed(int(cfg[P.SEED]) + _ROUNDING_SEED)
    store = None
    if uplink.error_feedback:
        if not state_dir:
            raise RuntimeError(f"client {client}: uplink.error_feedback needs a state folder for the residual "
                               "(simulation: the run folder; deployment: --node-config \"state-dir=PATH\")")
        store = ResidualStore(Path(state_dir), client)
    server_round = int(cfg[P.ROUND])
    residual = store.load(server_round) if store is not None else None
    arrays, new_residual = client_arrays(trained, received, uplink, residual, generator)
    if store is not None and new_residual is not None:
        store.save(server_round, new_residual, keep_from=int(cfg[P.STATE_KEEP_FROM]))
    return arrays
