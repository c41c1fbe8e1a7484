"""Device profiles: classes of devices, the share of clients that have each, the bit-widths it runs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..streams import Stream, stream_rng
from .bitwidths import Setting, parse_setting, setting_name


@dataclass(frozen=True)
class Profile:
    """A device class: its name, the share of clients that have it, the bit-widths it runs."""

    name: str
    share: float
    bits: tuple[int, ...]

    @property
    def settings(self) -> list[Setting]:
        return [parse_setting(b) for b in self.bits]


def profiles_from_config(entries: Sequence[Mapping]) -> list[Profile]:
    """``strategy.profiles`` entries (``{name, share, bits}``) as :class:`Profile` objects."""
    return [Profile(p["name"], float(p["share"]), tuple(p["bits"])) for p in entries]


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
    """Accuracy at each profile's deployment settings."""
    return {p.name: {setting_name(s): accuracy[setting_name(s)] for s in p.settings} for p in profiles}
