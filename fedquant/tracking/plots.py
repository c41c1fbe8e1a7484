"""PNG plots for a run and for a sweep (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _bits_axis(settings: list[str]) -> list[str]:
    return [s.upper() if s != "fp" else "FP32" for s in settings]


def plot_accuracy_vs_bits(final: dict[str, float], path: Path, title: str) -> Path:
    """Final test accuracy at each evaluation setting."""
    settings = list(final)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(range(len(settings)), [100 * final[s] for s in settings], marker="o")
    ax.set_xticks(range(len(settings)), _bits_axis(settings))
    ax.set_xlabel("evaluation setting (weight / activation bits)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_accuracy_vs_round(rounds: list[dict], path: Path, title: str) -> Path:
    """Test accuracy per evaluated round, one line per setting."""
    evaluated = [r for r in rounds if "eval" in r]
    fig, ax = plt.subplots(figsize=(6, 4))
    for setting in evaluated[-1]["eval"]:
        ax.plot([r["round"] for r in evaluated], [100 * r["eval"][setting]["accuracy"] for r in evaluated],
                marker=".", label=_bits_axis([setting])[0])
    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.legend(title="setting", fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_partition(histogram: np.ndarray, path: Path, title: str, max_clients: int = 100) -> Path:
    """Stacked bars: samples of each class held by each client (the first ``max_clients``)."""
    hist = np.asarray(histogram)[:max_clients]
    fig, ax = plt.subplots(figsize=(max(6, 0.12 * len(hist)), 4))
    bottom = np.zeros(len(hist))
    cmap = plt.get_cmap("tab10" if hist.shape[1] <= 10 else "viridis", hist.shape[1])
    for c in range(hist.shape[1]):
        ax.bar(range(len(hist)), hist[:, c], bottom=bottom, color=cmap(c), width=0.9,
               label=str(c) if hist.shape[1] <= 10 else None)
        bottom += hist[:, c]
    ax.set_xlabel("client")
    ax.set_ylabel("training samples")
    ax.set_title(title)
    if hist.shape[1] <= 10:
        ax.legend(title="class", fontsize=7, ncol=2, loc="upper right")
    return _save(fig, path)


def _method_styles(n: int) -> list[dict]:
    """Distinct colour (and, past 20 methods, dashes) for each of ``n`` methods."""
    colors = plt.get_cmap("tab10" if n <= 10 else "tab20").colors
    return [{"color": colors[i % len(colors)], "linestyle": "-" if i < len(colors) else "--"} for i in range(n)]


def plot_methods_vs_bits(table: dict[str, dict[str, tuple[float, float]]], path: Path, title: str) -> Path:
    """Mean +- std accuracy per setting, one line per method (a sweep's comparison)."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    settings = list(next(iter(table.values())))
    x = np.arange(len(settings))
    for (method, cells), style in zip(table.items(), _method_styles(len(table)), strict=True):
        mean = [100 * cells[s][0] if s in cells else np.nan for s in settings]
        std = [100 * cells[s][1] if s in cells else np.nan for s in settings]
        ax.errorbar(x, mean, yerr=std, marker="o", capsize=3, label=method, **style)
    ax.set_xticks(x, _bits_axis(settings))
    ax.set_xlabel("evaluation setting (weight / activation bits)")
    ax.set_ylabel("test accuracy (%), mean ± std over seeds")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_methods_vs_round(curves: dict[str, dict[int, dict[str, float]]], settings: list[str], path: Path,
                          title: str) -> Path:
    """One panel per setting: mean accuracy per evaluated round, one line per method."""
    fig, axes = plt.subplots(1, len(settings), figsize=(5.5 * len(settings), 4.5), sharey=True, squeeze=False)
    styles = _method_styles(len(curves))
    for ax, setting in zip(axes[0], settings, strict=True):
        for (method, per_round), style in zip(curves.items(), styles, strict=True):
            # round 0 (the untrained model, ~10%) is left out: it would squash the curves
            rounds = [r for r, cells in per_round.items() if setting in cells and r > 0]
            ax.plot(rounds, [100 * per_round[r][setting] for r in rounds], marker=".", label=method, **style)
        ax.set_title(_bits_axis([setting])[0])
        ax.set_xlabel("round")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test accuracy (%), mean over seeds")
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))  # beside: curves cross everywhere
    fig.suptitle(title)
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")  # keeps a legend placed beside the axes
    plt.close(fig)
    return path
