"""Device profiles: classes of devices, the share of clients that have each, the bit-widths it
runs and the width of the model it holds (HeteroFL's capacity ratio, see
:mod:`fedquant.models.width`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..streams import Stream, stream_rng
from .bitwidths import Setting, parse_setting, setting_name


@dataclass(frozen=True)
class Profile:
    """A device class: its name, the share of clients that have it, the bit-widths it runs (ints,
    or ``"fp"`` for float) and the width ``r`` of its sub-model (1: the full model)."""

    name: str
    share: float
    bits: tuple[int | str, ...]
    width: float = 1.0

    @property
    def settings(self) -> list[Setting]:
        return [parse_setting(b) for b in self.bits]


def profiles_from_config(entries: Sequence[Mapping]) -> list[Profile]:
    """``strategy.profiles`` entries (``{name, share, bits[, width]}``) as :class:`Profile` objects."""
    return [Profile(p["name"], float(p["share"]), tuple(p["bits"]), float(p.get("width", Profile.width)))
            for p in entries]


def at_width(name: str, width: float) -> str:
    """The name of a setting evaluated on the sub-model of ``width``: ``w2a2@0.25`` (the setting's
    own name at width 1)."""
    return name if width == 1 else f"{name}@{width:g}"


def width_levels(profiles: list[Profile]) -> dict[float, list[Setting]]:
    """The widths below 1 that profiles hold, each with the settings its profiles deploy."""
    levels: dict[float, list[Setting]] = {}
    for p in profiles:
        if p.width < 1:
            levels.setdefault(p.width, [])
            levels[p.width] += [s for s in p.settings if s not in levels[p.width]]
    return levels


def assign_profiles(profiles: list[Profile], num_clients: int, seed: int) -> list[int]:
    """Profile index of every client: shares rounded by largest remainder, placed at random."""
    raw = np.array([p.share for p in profiles]) * num_clients
    counts = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - counts), kind="stable")[: num_clients - counts.sum()]:
        counts[i] += 1
    labels = np.repeat(np.arange(len(profiles)), counts)
    return stream_rng(seed, Stream.PROFILES).permutation(labels).tolist()


def with_profile_settings(settings: list[Setting], profiles: list[Profile]) -> list[Setting]:
    """``settings`` plus every profile's deployment settings not already in it, in order."""
    return settings + list(dict.fromkeys(s for p in profiles for s in p.settings if s not in settings))


def per_profile(profiles: list[Profile], accuracy: Mapping[str, float]) -> dict[str, dict[str, float]]:
    """Accuracy at each profile's deployment settings (on its sub-model when its width is below 1)."""
    return {p.name: {setting_name(s): accuracy[at_width(setting_name(s), p.width)] for s in p.settings}
            for p in profiles}
