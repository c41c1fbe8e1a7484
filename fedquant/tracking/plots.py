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
PARTITION_HEADROOM = 1.08  # y-axis top of partition.png / the tallest bar


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


MARKERS = ("o", "s", "^", "v", "D", "P", "X", "*")
LINESTYLES = ("-", "--", "-.", ":")


def _setting_styles(settings: list[str]) -> dict[str, dict]:
    """A distinct colour, marker and line style per setting (told apart without colour too)."""
    colors = plt.get_cmap("tab10").colors
    return {s: {"color": colors[i % len(colors)], "marker": MARKERS[i % len(MARKERS)],
                "linestyle": LINESTYLES[i % len(LINESTYLES)], "markersize": 4}
            for i, s in enumerate(settings)}


def _series(rounds: list[dict], setting: str) -> tuple[list[int], list[float]]:
    """Rounds that evaluated ``setting`` and its test accuracy there (%)."""
    done = [r for r in rounds if setting in r.get("eval", {})]
    return [r["round"] for r in done], [100 * r["eval"][setting]["accuracy"] for r in done]


def drop_from_fp(rounds: list[dict], setting: str) -> tuple[list[int], list[float]]:
    """Rounds that evaluated both fp and ``setting``, and fp accuracy - setting accuracy there
    (percentage points; > 0: the setting is below float)."""
    done = [r for r in rounds if "fp" in r.get("eval", {}) and setting in r["eval"]]
    return ([r["round"] for r in done],
            [100 * (r["eval"]["fp"]["accuracy"] - r["eval"][setting]["accuracy"]) for r in done])


def figure_accuracy_vs_round(rounds: list[dict], title: str) -> Figure:
    """Test accuracy per evaluated round, one line per setting; below it (when fp and another
    setting were evaluated) the drop from fp per setting and round, in points."""
    evaluated = [r for r in rounds if "eval" in r]
    settings = list(dict.fromkeys(s for r in evaluated for s in r["eval"]))
    quantized = [s for s in settings if s != "fp"] if "fp" in settings else []
    styles = _setting_styles(settings)
    fig, axes = plt.subplots(2 if quantized else 1, 1, figsize=(7, 6.5 if quantized else 4),
                             sharex=True, squeeze=False,
                             height_ratios=[3, 2] if quantized else None)
    top = axes[0][0]
    for setting in settings:
        top.plot(*_series(evaluated, setting), label=_bits_axis([setting])[0], **styles[setting])
    _accuracy_axis(top, "test accuracy (%)")
    top.set_title(title)
    top.legend(title="setting", fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    if quantized:
        _drop_panel(axes[1][0], evaluated, quantized, styles)
    for ax in axes[:, 0]:
        ax.grid(alpha=0.3)
    axes[-1][0].set_xlabel("round")
    axes[-1][0].xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    return fig


def _drop_panel(ax: Axes, rounds: list[dict], settings: list[str], styles: dict[str, dict]) -> None:
    """fp accuracy - setting accuracy per round (points), one line per quantized setting."""
    ax.axhline(0, color="grey", linewidth=1)
    for setting in settings:
        ax.plot(*drop_from_fp(rounds, setting), label=_bits_axis([setting])[0], **styles[setting])
    ax.set_ylabel("drop from FP32\n(points, fp − setting)")


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
    ax.set_ylim(0, PARTITION_HEADROOM * max(1, bottom.max()))  # the tallest bar below the frame
    ax.set_xlabel("client")
    ax.set_ylabel("training samples")
    ax.set_title(title)
    if hist.shape[1] <= 10:  # beside the axes: inside, it hides bars
        ax.legend(title="class", fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
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
    fig, ax = plt.subplots(figsize=(7, 5), layout="constrained")
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
    _legend_below(fig, ax)
    ax.grid(alpha=0.3)
    return fig


def plot_methods_vs_bits(table: dict[str, dict[str, tuple[float, float]]], path: Path, title: str,
                         chance: float | None = None) -> Path:
    """Saves :func:`figure_methods_vs_bits` to ``path``."""
    return _save(figure_methods_vs_bits(table, title, chance), path)


def figure_methods_vs_round(curves: dict[str, dict[int, dict[str, float]]], settings: list[str],
                            title: str, xs: dict[str, dict[int, float]] | None = None,
                            xlabel: str = "round") -> Figure:
    """One panel per setting: mean accuracy per evaluated round (from round 0), one line per
    method; with ``xs`` (method -> round -> x, e.g. cumulative uplink MB) against that instead."""
    fig, axes = plt.subplots(1, len(settings), figsize=(5.5 * len(settings), 5), sharey=True,
                             squeeze=False, layout="constrained")
    styles = _method_styles(len(curves))
    for ax, setting in zip(axes[0], settings, strict=True):
        for (method, per_round), style in zip(curves.items(), styles, strict=True):
            rounds = [r for r, cells in per_round.items() if setting in cells and (xs is None or r in xs[method])]
            x = rounds if xs is None else [xs[method][r] for r in rounds]
            ax.plot(x, [100 * per_round[r][setting] for r in rounds], marker=".", label=method, **style)
        ax.set_title(_bits_axis([setting])[0])
        ax.set_xlabel(xlabel)
        if xs is None:
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    _accuracy_axis(axes[0][0], "test accuracy (%), mean over seeds")
    _legend_below(fig, axes[0][0])
    fig.suptitle(title)
    return fig


def plot_methods_vs_round(curves: dict[str, dict[int, dict[str, float]]], settings: list[str],
                          path: Path, title: str, xs: dict[str, dict[int, float]] | None = None,
                          xlabel: str = "round") -> Path:
    """Saves :func:`figure_methods_vs_round` to ``path``."""
    return _save(figure_methods_vs_round(curves, settings, title, xs, xlabel), path)


def _legend_below(fig: Figure, ax: Axes) -> None:
    """``ax``'s legend under the panels (constrained layout): long method labels neither cover
    the curves nor squeeze the axes."""
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", fontsize=8)


def _save(fig: Figure, path: Path) -> Path:
    if fig.get_layout_engine() is None:  # constrained-layout figures place themselves
        fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")  # keeps a legend placed beside the axes
    plt.close(fig)
    return path
