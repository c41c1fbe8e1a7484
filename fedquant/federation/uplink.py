"""What a client sends back (uplink) and what the server broadcasts (downlink), compressed with
:mod:`fedquant.federation.compression`, and a client's error-feedback residual.

Uplink, with ``w`` the model the client received and ``w_k`` its locally trained model:

- ``send="update"``: the client sends ``C(u)`` with ``u = w_k - w (+ e_k)``; the server takes
  ``w + C(u)`` as the client's model (Flower's aggregation then runs unchanged).
- ``send="weights"``: the client sends ``C(w_k)``; the server takes it as the client's model.
- error feedback (Seide et al. 2014; Karimireddy et al. 2019, EF-SGD), updates only: client ``k``
  keeps ``e_k <- u - C(u)``, the part of its update the grid dropped, and adds it to its next
  update. ``e_k`` is client-private: the server never sees it (:class:`ResidualStore`).

Non-floating entries (BatchNorm's ``num_batches_tracked``) travel as they are. Downlink: the
server broadcasts ``C(w)`` with nearest rounding (deterministic; the server's own model stays
float), and every client trains from the decoded model.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from ..files import atomic_write
from .compression import Codec, decode_state, encode_state

SEND = ("update", "weights")


@dataclass(frozen=True)
class Uplink:
    """The ``uplink`` config section as the client and server use it."""

    codec: Codec = Codec()
    send: str = "update"
    error_feedback: bool = False

    @classmethod
    def from_config(cls, section: Mapping) -> Uplink:
        return cls(Codec(int(section["bits"]), str(section["rounding"]), str(section["granularity"])),
                   str(section["send"]), bool(section["error_feedback"]))


def _floating(state: Mapping[str, torch.Tensor]) -> list[str]:
    return [k for k, v in state.items() if v.is_floating_point()]


def client_arrays(trained: Mapping[str, torch.Tensor], received: Mapping[str, torch.Tensor], uplink: Uplink,
                  residual: Mapping[str, torch.Tensor] | None, generator: torch.Generator | None
                  ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
    """The arrays a client sends for its ``trained`` model, and its new residual (None without
    error feedback). With the codec off, ``trained`` as float32, exactly as without the key."""
    if uplink.codec.off:
        return encode_state(trained, uplink.codec), None
    if uplink.send == "weights":
        return encode_state(trained, uplink.codec, generator), None
    update = {k: (trained[k].float() - received[k].float()) if k in _floating(trained) else trained[k]
              for k in trained}
    if uplink.error_feedback and residual:
        update = {k: v + residual[k] if k in residual else v for k, v in update.items()}
    arrays = encode_state(update, uplink.codec, generator)
    if not uplink.error_feedback:
        return arrays, None
    sent = decode_state(arrays, update, uplink.codec)
    return arrays, {k: update[k] - sent[k] for k in _floating(trained)}


def server_state(arrays: Mapping[str, torch.Tensor], sent: Mapping[str, torch.Tensor], uplink: Uplink
                 ) -> dict[str, torch.Tensor]:
    """The client's model as the server reconstructs it from the ``arrays`` it received, ``sent``
    being the model the server sent that client (keys, shapes, dtypes)."""
    if uplink.codec.off:
        return {k: arrays[k] for k in sent}
    decoded = decode_state(arrays, {k: v.float() if v.is_floating_point() else v for k, v in sent.items()},
                           uplink.codec)
    if uplink.send == "weights":
        return {k: decoded[k].to(sent[k].dtype) for k in sent}
    return {k: (sent[k].float() + decoded[k]).to(sent[k].dtype) if sent[k].is_floating_point() else decoded[k]
            for k in sent}


def broadcast(state: Mapping[str, torch.Tensor], codec: Codec) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The downlink: the arrays the server sends, and the model every client decodes from them."""
    arrays = encode_state(state, codec)
    return arrays, decode_state(arrays, state, codec) if not codec.off else dict(state)


class ResidualStore:
    """A client's error-feedback residuals, one file per round it took part in:
    ``<root>/<client>/r<round>.pt``, written with :func:`fedquant.files.atomic_write` (a SIGKILL
    leaves the old file or the new).

    In round ``r`` the client reads its newest residual from a round before ``r``. After writing
    it drops the files superseded before ``keep_from`` (the server's newest checkpoint round): a
    run resumed from that checkpoint re-runs the later rounds, which re-write their files with the
    same contents (every round is reproducible; see the resume tests), so resuming is exact.
    """

    _NAME = re.compile(r"^r(\d+)\.pt$")

    def __init__(self, root: str | os.PathLike, client: int) -> None:
        self.dir = Path(root) / str(client)

    def _rounds(self) -> list[int]:
        if not self.dir.is_dir():
            return []
        return sorted(int(m.group(1)) for p in self.dir.iterdir() if (m := self._NAME.match(p.name)))

    def load(self, server_round: int) -> dict[str, torch.Tensor] | None:
        earlier = [r for r in self._rounds() if r < server_round]
        return torch.load(self.dir / f"r{earlier[-1]}.pt", weights_only=True) if earlier else None

    def save(self, server_round: int, residual: Mapping[str, torch.Tensor], keep_from: int = 0) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_write(self.dir / f"r{server_round}.pt", lambda tmp: torch.save(dict(residual), tmp))
        rounds = self._rounds()
        base = [r for r in rounds if r <= keep_from]
        for r in rounds:
            if base and r < base[-1]:
                (self.dir / f"r{r}.pt").unlink(missing_ok=True)
