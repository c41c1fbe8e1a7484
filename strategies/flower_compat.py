"""The Flower releases the strategies are tested with, and the error raised when the installed
Flower does not keep the state or send the messages they rely on."""

from __future__ import annotations

from fedquant.federation.flower_releases import TESTED_FLWR, installed_flwr, is_tested


class FlowerMismatch(RuntimeError):
    """The installed Flower differs from the tested one where fedquant depends on its internals."""


def flower_mismatch(what: str) -> FlowerMismatch:
    """``what`` went wrong, and whether the installed flwr is one of the tested versions, in one line."""
    installed = installed_flwr()
    tested = " and ".join(TESTED_FLWR)
    if is_tested(installed):
        note = (f"flwr {installed} is a tested version ({tested}), so a subclass or patch changed Flower's "
                "strategy")
    else:
        note = (f"the installed flwr {installed} is not a tested version ({tested}): install a tested one, or "
                "update strategies/ for it")
    return FlowerMismatch(f"{what}; {note}")
