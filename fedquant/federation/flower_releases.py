"""The Flower releases fedquant is tested with (pyproject.toml's pin), and the installed one:
what the two adapters to Flower's internals (``strategies``' server state and message checks,
``runtime.simulation``'s reply polling) name when Flower no longer matches them."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

TESTED_FLWR = ("1.41", "1.42")  # major.minor


def installed_flwr() -> str:
    """The installed flwr's version ("unknown" when its metadata is missing)."""
    try:
        return version("flwr")
    except PackageNotFoundError:  # e.g. run from a source tree
        return "unknown"


def is_tested(release: str) -> bool:
    return ".".join(release.split(".")[:2]) in TESTED_FLWR
