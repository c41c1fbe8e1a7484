"""PNG plots for a run and for a sweep (matplotlib, headless).

Each ``plot_*`` saves the figure that the matching ``figure_*`` builds (tests inspect the latter).
Accuracy axes start at 0 (said in their label) so that drops are drawn to scale; when the
chance level (1 / number of classes) is known it is a dotted line.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

ACCURACY_FROM_0 = "axis from 0"


def _bits_axis(settings: list[str]) -> list[str]:
    return [s.upper() if s != "fp" else "FP32" for s in settings]


def _accuracy_axis(ax: Axes, label: str, chance: float | None = None) -> None:
    """y from 0 to at least 100 (%), labelled as such; chance level as a dotted line if known."""
    if chance is not None:
        ax.axhline(100 * chance, color="grey", linestyle=":", linewidth=1,
                   label=f"chance ({100 * chance:.0f}%)")
    ax.set_ylim(0, max(100.0, ax.get_ylim()[1]))
    ax.set_ylabel(f"{label},\n{ACCURACY_FROM_0}")


def figure_accuracy_vs_bits(final: dict[str, float], title: str,
                            chance: float | None = None) -> Figure:
    """Final test accuracy at each evaluation setting."""
    settings = list(final)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(range(len(settings)), [100 * final[s] for s in settings], marker="o")
    ax.set_xticks(range(len(settings)), _bits_axis(settings))
    ax.set_xlabel("evaluation setting (weight / activation bits)")
    _accuracy_axis(ax, "test accuracy (%)", chance)
    if chance is not None:
        ax.legend(fontsize=8)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return fig


def plot_accuracy_vs_bits(final: dict[str, float], path: Path, title: str,
                          chance: float | None = None) -> Path:
    """Saves :func:`figure_accuracy_vs_bits` to ``path``."""
    return _save(figure_accuracy_vs_bits(final, title, chance), path)


def figure_accuracy_vs_round(rounds: list[dict], title: str) -> Figure:
    """Test accuracy per evaluated round, one line per setting."""
    evaluated = [r for r in rounds if "eval" in r]
    fig, ax = plt.subplots(figsize=(6, 4))
    for setting in evaluated[-1]["eval"]:
        ax.plot([r["round"] for r in evaluated],
                [100 * r["eval"][setting]["accuracy"] for r in evaluated],
                marker=".", label=_bits_axis([setting])[0])
    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    _accuracy_axis(ax, "test accuracy (%)")
    ax.set_title(title)
    ax.legend(title="setting", fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def plot_accuracy_vs_round(rounds: list[dict], path: Path, title: str) -> Path:
    """Saves :func:`figure_accuracy_vs_round` to ``path``."""
    return _save(figure_accuracy_vs_round(rounds, title), path)


def _client_tick_font(n: int) -> tuple[float, int]:
    """Font size and rotation that fit one label per client at 0.12 inch per client."""
    if n <= 20:
        return 8, 0
    return (7, 90) if n <= 50 else (6, 90)


def figure_partition(histogram: np.ndarray, title: str, max_clients: int = 100) -> Figure:
    """Stacked bars: samples of each class held by each client (the first ``max_clients``), every
    client labelled on the x-axis."""
    hist = np.asarray(histogram)[:max_clients]
    fig, ax = plt.subplots(figsize=(max(6, 0.12 * len(hist)), 4))
    bottom = np.zeros(len(hist))
    cmap = plt.get_cmap("tab10" if hist.shape[1] <= 10 else "viridis", hist.shape[1])
    for c in range(hist.shape[1]):
        ax.bar(range(len(hist)), hist[:, c], bottom=bottom, color=cmap(c), width=0.9,
               label=str(c) if hist.shape[1] <= 10 else None)
        bottom += hist[:, c]
    size, rotation = _client_tick_font(len(hist))
    ax.set_xticks(range(len(hist)), [str(i) for i in range(len(hist))], fontsize=size,
                  rotation=rotation)
    ax.set_xlim(-0.6, len(hist) - 0.4)
    ax.set_xlabel("client")
    ax.set_ylabel("training samples")
    ax.set_title(title)
    if hist.shape[1] <= 10:
        ax.legend(title="class", fontsize=7, ncol=2, loc="upper right")
    return fig


def plot_partition(histogram: np.ndarray, path: Path, title: str, max_clients: int = 100) -> Path:
    """Saves :func:`figure_partition` to ``path``."""
    return _save(figure_partition(histogram, title, max_clients), path)


def _method_styles(n: int) -> list[dict]:
    """Distinct colour (and, past 20 methods, dashes) for each of ``n`` methods."""
    colors = plt.get_cmap("tab10" if n <= 10 else "tab20").colors
    return [{"color": colors[i % len(colors)], "linestyle": "-" if i < len(colors) else "--"}
            for i in range(n)]


def figure_methods_vs_bits(table: dict[str, dict[str, tuple[float, float]]], title: str,
                           chance: float | None = None) -> Figure:
    """Mean +- std accuracy per setting, one line per method (a sweep's comparison)."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    settings = list(dict.fromkeys(s for cells in table.values() for s in cells))
    x = np.arange(len(settings))
    for (method, cells), style in zip(table.items(), _method_styles(len(table)), strict=True):
        mean = [100 * cells[s][0] if s in cells else np.nan for s in settings]
        std = [100 * cells[s][1] if s in cells else np.nan for s in settings]
        ax.errorbar(x, mean, yerr=std, marker="o", capsize=3, label=method, **style)
    ax.set_xticks(x, _bits_axis(settings))
    ax.set_xlabel("evaluation setting (weight / activation bits)")
    _accuracy_axis(ax, "test accuracy (%), mean ± std over seeds", chance)
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def plot_methods_vs_bits(table: dict[str, dict[str, tuple[float, float]]], path: Path, title: str,
                         chance: float | None = None) -> Path:
    """Saves :func:`figure_methods_vs_bits` to ``path``."""
    return _save(figure_methods_vs_bits(table, title, chance), path)


def figure_methods_vs_round(curves: dict[str, dict[int, dict[str, float]]], settings: list[str],
                            title: str) -> Figure:
    """One panel per setting: mean accuracy per evaluated round (from round 0), one line per
    method."""
    fig, axes = plt.subplots(1, len(settings), figsize=(5.5 * len(settings), 4.5), sharey=True,
                             squeeze=False)
    styles = _method_styles(len(curves))
    for ax, setting in zip(axes[0], settings, strict=True):
        for (method, per_round), style in zip(curves.items(), styles, strict=True):
            rounds = [r for r, cells in per_round.items() if setting in cells]
            ax.plot(rounds, [100 * per_round[r][setting] for r in rounds], marker=".",
                    label=method, **style)
        ax.set_title(_bits_axis([setting])[0])
        ax.set_xlabel("round")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    _accuracy_axis(axes[0][0], "test accuracy (%), mean over seeds")
    # the legend beside the panels: curves cross everywhere
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.suptitle(title)
    return fig


def plot_methods_vs_round(curves: dict[str, dict[int, dict[str, float]]], settings: list[str],
                          path: Path, title: str) -> Path:
    """Saves :func:`figure_methods_vs_round` to ``path``."""
    return _save(figure_methods_vs_round(curves, settings, title), path)


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")  # keeps a legend placed beside the axes
    plt.close(fig)
    return path
