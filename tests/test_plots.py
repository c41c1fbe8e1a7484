"""A training run's plots, read back from the matplotlib figures: partition.png keeps its legend
off the bars and room above the tallest bar; accuracy_vs_round.png has a second panel with the
drop from fp per setting, and its lines differ by marker and line style, not by colour alone."""

import matplotlib.pyplot as plt
import numpy as np
import pytest

from fedquant.tracking.plots import (
    figure_accuracy_vs_round,
    figure_partition,
    plot_accuracy_vs_round,
)

SETTINGS = ("fp", "w8a8", "w6a6", "w4a4", "w3a3", "w2a2")


def _rounds() -> list[dict]:
    """Rounds 0, 5, ..., 20 evaluated at every setting, a round without evaluation between."""
    rng = np.random.default_rng(0)
    rounds = []
    for r in range(0, 21, 5):
        rounds.append({"round": r, "eval": {s: {"accuracy": float(rng.uniform(0.1, 0.9)), "loss": 1.0}
                                            for s in SETTINGS}})
        rounds.append({"round": r + 1, "train": {}})
    return rounds


@pytest.mark.parametrize("clients", [10, 100])
def test_partition_legend_beside_the_bars_and_headroom_above_them(clients):
    rng = np.random.default_rng(1)
    hist = rng.integers(0, 90, size=(clients, 10))
    hist[3] = 200  # the tallest bar: 2,000 samples
    fig = figure_partition(hist, "t")
    ax = fig.axes[0]
    fig.canvas.draw()
    legend = ax.get_legend().get_window_extent()
    frame = ax.get_window_extent()
    assert legend.x0 >= frame.x1  # beside the axes: it covers no bar
    assert ax.get_ylim()[1] >= 1.05 * 2000 and ax.get_ylim()[0] == 0
    plt.close(fig)


def test_accuracy_vs_round_has_a_drop_from_fp_panel():
    rounds = _rounds()
    fig = figure_accuracy_vs_round(rounds, "t")
    assert len(fig.axes) == 2
    top, drop = fig.axes
    evaluated = [r for r in rounds if "eval" in r]
    lines = {line.get_label(): line for line in drop.get_lines() if not line.get_label().startswith("_")}
    assert list(lines) == ["W8A8", "W6A6", "W4A4", "W3A3", "W2A2"]  # fp - fp = 0 is the reference line
    for setting in SETTINGS[1:]:
        line = lines[setting.upper()]
        assert list(line.get_xdata()) == [r["round"] for r in evaluated]
        expected = [100 * (r["eval"]["fp"]["accuracy"] - r["eval"][setting]["accuracy"]) for r in evaluated]
        assert np.allclose(line.get_ydata(), expected)
    assert "drop from FP32" in drop.get_ylabel() and drop.get_xlabel() == "round"
    plt.close(fig)


def test_accuracy_vs_round_lines_differ_without_colour(tmp_path):
    fig = figure_accuracy_vs_round(_rounds(), "t")
    top = fig.axes[0]
    lines = [line for line in top.get_lines() if not line.get_label().startswith("_")]
    assert len(lines) == len(SETTINGS)
    styles = {(line.get_marker(), line.get_linestyle()) for line in lines}
    assert len(styles) == len(SETTINGS)  # each setting its own marker and dash pattern
    assert len({line.get_marker() for line in lines}) == len(SETTINGS)
    legend = top.get_legend()
    fig.canvas.draw()
    assert legend.get_window_extent().x0 >= top.get_window_extent().x1  # beside the curves
    plt.close(fig)
    path = plot_accuracy_vs_round(_rounds(), tmp_path / "a.png", "t")  # outputs.py's call
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_accuracy_vs_round_without_fp_is_one_panel():
    rounds = [{"round": r, "eval": {"w4a4": {"accuracy": 0.1 * r}}} for r in range(3)]
    fig = figure_accuracy_vs_round(rounds, "t")
    assert len(fig.axes) == 1 and list(fig.axes[0].get_lines()[0].get_ydata()) == [0.0, 10.0, 20.0]
    plt.close(fig)
