"""report.png (test figure vs bit-width), report_rounds.png (test accuracy vs round) and
report_uplink.png (test accuracy vs the clients' cumulative uplink bytes, one panel per setting)."""

from __future__ import annotations

import textwrap
from pathlib import Path

from ..tracking.plots import plot_methods_vs_bits, plot_methods_vs_round
from .runs import Methods
from .summary import Table, curves, evaluations_used, shown_settings, uplink_curves
from .tables import averaged, post_training

NUM_CLASSES = {"digits": 10, "fmnist": 10, "cifar10": 10, "cifar100": 100}  # chance line in plots


def chance_level(methods: Methods) -> float | None:
    """1 / number of classes when every run is on the same known dataset, else None."""
    names = {((r.get("config") or {}).get("dataset") or {}).get("name")
             for runs in methods.values() for r in runs}
    name = names.pop() if len(names) == 1 else None
    return 1 / NUM_CLASSES[name] if name in NUM_CLASSES else None


def post_training_by_method(methods: Methods) -> dict[str, str]:
    """method -> its runs' post-training options (:func:`~fedquant.report.tables.post_training`),
    the distinct ones joined by " | "."""
    return {m: " | ".join(dict.fromkeys(post_training(r) for r in runs))
            for m, runs in methods.items()}


def plot_labels(methods: Methods) -> tuple[dict[str, str], str]:
    """The legend label of each method and a subtitle line: the post-training options in the
    subtitle when all runs share them, else in each method's legend label."""
    options = post_training_by_method(methods)
    if len(set(options.values())) == 1:
        subtitle = textwrap.fill(f"post-training: {options.popitem()[1]}", 90)
        return {m: m for m in methods}, f"\n{subtitle}"
    return {m: f"{m}\n[{o}]" for m, o in options.items()}, ""


def write_plots(methods: Methods, test: Table, last: int, out: Path, name: str) -> None:
    """report.png (test figure vs bit-width) and report_rounds.png (test accuracy vs round), the
    figure rule (:func:`~fedquant.report.tables.averaged`) and the post-training options said."""
    legend, subtitle = plot_labels(methods)
    means = {legend[m]: {s: (c.mean, c.std) for s, c in cells.items()} for m, cells in test.items()}
    title = (f"Test accuracy vs bit-width ({name})\n"
             f"a run's figure: {averaged(last, evaluations_used(methods, last))}{subtitle}")
    plot_methods_vs_bits(means, out / "report.png", title, chance_level(methods))
    settings = list(dict.fromkeys(s for cells in test.values() for s in cells))
    per_round = {legend[m]: c for m, c in curves(methods).items()}
    plot_methods_vs_round(per_round, shown_settings(settings), out / "report_rounds.png",
                          f"Test accuracy vs round, mean over seeds ({name}){subtitle}")
    sent = {legend[m]: c for m, c in uplink_curves(methods).items()}
    if sent and len(sent) == len(per_round):  # every method counted its bytes
        plot_methods_vs_round(per_round, [s for s in settings if "@" not in s and ":" not in s], out / "report_uplink.png",
                              f"Test accuracy vs what the clients sent, mean over seeds ({name}){subtitle}",
                              xs=sent, xlabel="cumulative uplink (MB)")
