"""Device profiles: classes of devices, the share of clients that have each, the bit-widths it
runs, the width of the model it holds (HeteroFL's capacity ratio, see
:mod:`fedquant.models.width`), its quantizer scheme (weight granularity, float or power-of-two
scales: :class:`fedquant.quant.scheme.Scheme`) and optionally a byte ``budget`` for a
mixed-precision assignment the server chooses (each layer at one of ``layer_bits``; its result is
named ``mp_<profile>`` on the profile's level and ``mixed`` in ``per_profile``).

What a profile deploys on is its :class:`Level`: the sub-model width and the scheme. The server
tests the full model at the run's scheme (``quantization``) and every other level its profiles
hold; a setting's result on a level is named ``<setting>[@<width>][:<scheme>]``, e.g.
``w2a2@0.25`` or ``w4a4:per_tensor-pow2`` (the setting's own name on the full model at the run's
scheme)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from ..quant.scheme import Scheme
from ..streams import Stream, stream_rng
from .bitwidths import FLOAT, Setting, parse_setting, parse_settings, setting_name


def at_width(name: str, width: float) -> str:
    """The name of a setting evaluated on the sub-model of ``width``: ``w2a2@0.25`` (the setting's
    own name at width 1)."""
    return name if width == 1 else f"{name}@{width:g}"


@dataclass(frozen=True)
class Level:
    """What a profile deploys on: the sub-model ``width`` and the quantizer ``scheme`` (None: the
    run's, ``quantization``). ``Level()`` is the full model at the run's scheme."""

    width: float = 1.0
    scheme: Scheme | None = None

    def name(self, setting: str) -> str:
        """``<setting>[@<width>][:<scheme>]`` (module docstring)."""
        return at_width(setting, self.width) + (f":{self.scheme.label}" if self.scheme else "")


@dataclass(frozen=True)
class Profile:
    """A device class: its name, the share of clients that have it, the bit-widths it runs (ints,
    or ``"fp"`` for float), the width ``r`` of its sub-model (1: the full model) and its quantizer
    ``scheme`` where it differs from the run's (None: the run's); ``budget`` (bytes, an int, or a
    fraction of the float model's bytes) for a mixed-precision assignment over ``layer_bits``
    (empty: its quantized ``bits``)."""

    name: str
    share: float
    bits: tuple[int | str, ...]
    width: float = 1.0
    scheme: Scheme | None = None
    budget: int | Fraction | None = None
    layer_bits: tuple[int | str, ...] = ()

    @property
    def mixed(self) -> str | None:
        """The name of its mixed-precision result (None without a budget)."""
        return None if self.budget is None else f"mp_{self.name}"

    @property
    def layer_options(self) -> tuple[Setting, ...]:
        """The settings a layer may take under its budget."""
        given = self.layer_bits or self.bits
        return tuple(s for s in parse_settings(list(given), f"profile {self.name} layer_bits") if s != FLOAT)

    @property
    def settings(self) -> list[Setting]:
        return [parse_setting(b) for b in self.bits]

    @property
    def level(self) -> Level:
        return Level(self.width, self.scheme)


def profiles_from_config(entries: Sequence[Mapping], quantization: Mapping | None = None) -> list[Profile]:
    """``strategy.profiles`` entries (``{name, share, bits[, width, weight_granularity, scale]}``)
    as :class:`Profile` objects; a profile's scheme is the ``quantization`` section's (None: the
    defaults) with the profile's own ``weight_granularity`` / ``scale`` where it sets them."""
    run = Scheme.of(quantization or {})
    profiles = []
    for p in entries:
        own = run.over(p)
        profiles.append(Profile(p["name"], float(p["share"]), tuple(p["bits"]), float(p.get("width", Profile.width)),
                                None if own == run else own, budget_value(p.get("budget")),
                                tuple(p.get("layer_bits") or ())))
    return profiles


def budget_value(budget: object) -> int | Fraction | None:
    """A ``budget`` as given: bytes (an int, or a string of one), a fraction of the float bytes
    (a float or a string like ``"1/8"``, kept exact as written: ``0.7`` is 7/10), None;
    ``ValueError`` for anything else."""
    if budget is None or isinstance(budget, int) and not isinstance(budget, bool):
        return budget
    try:
        if isinstance(budget, str) and budget.strip().isdigit():
            return int(budget)
        if isinstance(budget, (float, str)):
            return Fraction(str(budget).strip())
        raise ValueError
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"budget={budget!r} is not valid: allowed is bytes (an integer, e.g. 20000) or a fraction "
                         "of the float model's bytes (e.g. 0.125 or '1/8')") from None


def deployment_levels(profiles: list[Profile]) -> dict[Level, list[Setting]]:
    """The levels other than ``Level()`` that profiles hold (a width below 1, a scheme of their
    own), each with the settings its profiles deploy."""
    levels: dict[Level, list[Setting]] = {}
    for p in profiles:
        if p.level != Level():
            levels.setdefault(p.level, [])
            levels[p.level] += [s for s in p.settings if s not in levels[p.level]]
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


def per_profile(profiles: list[Profile], values: Mapping[str, float]) -> dict[str, dict[str, float]]:
    """Each profile's values (accuracy, ``model_bytes``) at its deployment settings, on its level
    (its sub-model when its width is below 1, under its scheme), and ``mixed`` at its
    mixed-precision assignment where it has a budget (and ``values`` has it)."""
    out = {}
    for p in profiles:
        out[p.name] = {setting_name(s): values[p.level.name(setting_name(s))] for s in p.settings}
        if p.mixed and p.level.name(p.mixed) in values:
            out[p.name]["mixed"] = values[p.level.name(p.mixed)]
    return out
