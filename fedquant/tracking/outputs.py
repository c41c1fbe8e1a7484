"""A finished run's files: results.json, metrics.csv and the PNG plots."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .plots import plot_accuracy_vs_bits, plot_accuracy_vs_round, plot_partition
from .results import write_json, write_metrics_csv


def write_outputs(results: dict, output_dir: Path, label_histogram: np.ndarray) -> dict[str, Path]:
    """results.json, metrics.csv and the PNG plots (chance level from the label histogram's
    number of classes); returns the plots by name."""
    write_json(output_dir / "results.json", results)
    write_metrics_csv(output_dir / "metrics.csv", results)
    c = results["config"]
    name = f"{c['strategy']['name']} ({c['strategy']['sampling']}) on {c['dataset']['name']}"
    return {
        "accuracy_vs_bits": plot_accuracy_vs_bits(results["final"], output_dir / "accuracy_vs_bits.png",
                                                  f"Final accuracy: {name}", chance=1 / label_histogram.shape[1]),
        "accuracy_vs_round": plot_accuracy_vs_round(results["rounds"], output_dir / "accuracy_vs_round.png",
                                                    f"Accuracy per round: {name}"),
        "partition": plot_partition(label_histogram, output_dir / "partition.png",
                                    f"{c['partition']['name']} partition of {c['dataset']['name']} "
                                    f"({c['num_clients']} clients)"),
    }
