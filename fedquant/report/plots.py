"""report.png (test figure vs bit-width) and report_rounds.png (test accuracy vs round)."""

from __future__ import annotations

from pathlib import Path

from ..tracking.plots import plot_methods_vs_bits, plot_methods_vs_round
from .runs import Methods
from .summary import Table, curves, shown_settings

NUM_CLASSES = {"digits": 10, "fmnist": 10, "cifar10": 10, "cifar100": 100}  # chance line in plots


def chance_level(methods: Methods) -> float | None:
    """1 / number of classes when every run is on the same known dataset, else None."""
    names = {((r.get("config") or {}).get("dataset") or {}).get("name")
             for runs in methods.values() for r in runs}
    name = names.pop() if len(names) == 1 else None
    return 1 / NUM_CLASSES[name] if name in NUM_CLASSES else None


def write_plots(methods: Methods, test: Table, last: int, out: Path, name: str) -> None:
    """report.png (test figure vs bit-width) and report_rounds.png (test accuracy vs round)."""
    means = {m: {s: (c.mean, c.std) for s, c in cells.items()} for m, cells in test.items()}
    title = (f"Test accuracy vs bit-width ({name})\n"
             f"a run's figure: mean of its last {last} evaluations")
    plot_methods_vs_bits(means, out / "report.png", title, chance_level(methods))
    settings = list(dict.fromkeys(s for cells in test.values() for s in cells))
    plot_methods_vs_round(curves(methods), shown_settings(settings), out / "report_rounds.png",
                          f"Test accuracy vs round, mean over seeds ({name})")
