"""Figures of a training run: the learning curves and the confusion matrix.

Drawn on :class:`matplotlib.figure.Figure` objects rendered by the Agg canvas, never through
``pyplot``: the library neither switches matplotlib's process-wide backend nor keeps figures alive.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from cspnet.training.history import read_history


def _figure(width: float, height: float):  # -> matplotlib.figure.Figure (import kept lazy)
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def plot_history(history_csv: Path, out_png: Path, panels: Sequence[Any]) -> None:
    """The learning curves: one subplot per :class:`~cspnet.training.tasks.Panel` (``history.csv``
    columns against the epoch); nothing is written for an empty history.

    A panel without fixed limits whose values span more than two decades (a first-epoch validation
    loss of 2e7 beside later ones near 5) is drawn on a log scale, so that every point stays readable.
    """
    rows = read_history(history_csv)
    if not rows:
        return
    epochs = [int(r["epoch"]) for r in rows]
    fig = _figure(5 * len(panels), 4)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, panel in zip(axes, panels):
        shown: list[float] = []
        for column, label in panel.series:
            values = [_cell(r.get(column)) for r in rows]
            ax.plot(epochs, values, marker="o", label=label)
            shown += [v for v in values if math.isfinite(v)]
        ax.set(xlabel="epoch", ylabel=panel.ylabel, title=panel.title)
        if panel.ylim is not None:
            ax.set_ylim(*panel.ylim)
        elif shown and min(shown) > 0 and max(shown) / min(shown) > 100:
            ax.set_yscale("log")
            ax.set_title(f"{panel.title} (log scale)")
        ax.legend()
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)


def _cell(text: str | None) -> float:
    """A ``history.csv`` cell as a number (an empty cell, a metric that was not finite: NaN, a gap)."""
    return float(text) if text not in (None, "") else float("nan")


def plot_confusion_matrix(confusion: torch.Tensor, class_names: list[str], out_png: Path) -> None:
    """Rows: true class, columns: predicted class; counts written in the cells for up to 20 classes."""
    n = len(class_names)
    size = min(12, 2 + 0.5 * n)
    fig = _figure(size, size)
    ax = fig.subplots()
    ax.imshow(confusion.numpy(), cmap="Blues")
    if n <= 20:
        ax.set_xticks(range(n), class_names, rotation=90)
        ax.set_yticks(range(n), class_names)
        peak = int(confusion.max()) or 1
        for i in range(n):
            for j in range(n):
                value = int(confusion[i, j])
                if value:
                    ax.text(j, i, str(value), ha="center", va="center",
                            color="white" if value > peak / 2 else "black")
    ax.set(xlabel="predicted", ylabel="true", title="confusion matrix")
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
