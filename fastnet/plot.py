"""Learning-curve and confusion-matrix plots (needs matplotlib: ``pip install matplotlib``).

They draw on a ``matplotlib.figure.Figure`` with its own Agg canvas, never through pyplot, so
the session's backend (a notebook's inline one) is left as it was.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from fastnet.validation import check_count

NEEDS_MATPLOTLIB = "needs matplotlib: pip install matplotlib (fastnet's extra 'plot')"

#: ``plot_history``'s second panel: the first of these the history holds (train or ``val_``)
SECOND_PANEL = ("accuracy", "r2", "mae")


def _figure(width: float, height: float) -> Any:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError(f"plotting {NEEDS_MATPLOTLIB}") from None
    return FigureCanvasAgg(Figure(figsize=(width, height))).figure


def check_chart_path(path: str, option: str) -> None:
    """``path`` ends in a kind of file matplotlib writes (.png, .pdf, .svg, ...), and
    matplotlib is there to write it."""
    try:
        from matplotlib.backend_bases import FigureCanvasBase
    except ImportError:
        raise ValueError(f"{option} {NEEDS_MATPLOTLIB}") from None

    kinds = FigureCanvasBase.get_supported_filetypes()
    if os.path.splitext(path)[1][1:].lower() not in kinds:
        raise ValueError(f"{option} {path!r}: a chart file is one of .{', .'.join(kinds)}")


def confusion_path(path: str) -> str:
    """Where ``--plot curves.png`` puts its second figure: ``curves-confusion.png``."""
    stem, dot, suffix = path.rpartition(".")
    return f"{stem}-confusion.{suffix}" if dot else f"{path}-confusion"


def plot_confusion(
    cm: np.ndarray, path: str, title: str = "", labels: list[str] | None = None
) -> Any:
    """Write a confusion-matrix heat map (rows: true class, columns: predicted) to a PNG,
    the axes ticked with ``labels`` (the class names) or the class indices; returns the
    ``matplotlib`` figure."""
    k = cm.shape[0]
    fig = _figure(1.2 + 0.45 * k, 1.0 + 0.45 * k)
    ax = fig.subplots()
    rates = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for i, j in np.ndindex(k, k):
        color = "white" if rates[i, j] > 0.5 else "black"
        ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7, color=color)
    ax.set(xticks=range(k), yticks=range(k), xlabel="predicted class", ylabel="true class")
    if labels is not None:
        turned = max(map(len, labels)) > 3
        ax.set_xticklabels(labels, rotation=45 if turned else 0, ha="right" if turned else "center")
        ax.set_yticklabels(labels)
    ax.set_title(title or "confusion matrix", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return fig


def _curves(ax: Any, history: dict[str, list[float]], key: str, first: int) -> None:
    for prefix, style, label in (("", "o-C0", "train"), ("val_", "s-C1", "validation")):
        values = history.get(prefix + key, ())
        if len(values):
            ax.plot(range(first, first + len(values)), values, style, label=f"{label} {key}")
    ax.set(xlabel="epoch", ylabel=key)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend()


def plot_history(
    history: dict[str, list[float]], path: str, title: str = "", first_epoch: int | None = None
) -> Any:
    """Write per-epoch curves to a PNG: the loss, then the first of ``SECOND_PANEL`` the
    history holds (accuracy for classifiers, validation R2 for regression), each with its
    validation counterpart when there is one; ``first_epoch`` numbers the history's first
    entry (default: a ``History``'s own, e.g. ``n + 1`` after ``fit(initial_epoch=n)``, else
    1); returns the figure."""
    if "loss" not in history:
        raise ValueError("history has no 'loss' entry: pass a trained model's model.history")
    if first_epoch is None:
        from fastnet.callbacks import History

        first_epoch = history.first + 1 if isinstance(history, History) else 1
    first_epoch = check_count(first_epoch, "first_epoch", 1)
    held = [k for k in SECOND_PANEL if len(history.get(k, ())) or len(history.get(f"val_{k}", ()))]
    panels = ["loss"] + held[:1]
    fig = _figure(5.0 * len(panels), 4.0)
    for ax, key in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels):
        _curves(ax, history, key, first_epoch)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return fig
