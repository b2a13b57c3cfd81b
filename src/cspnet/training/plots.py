"""Figures of a training run: the learning curves (``learning_curves.png``, ``results.png``) and the confusion matrix.

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


def new_figure(width: float, height: float) -> Any:  # a matplotlib.figure.Figure (the import kept lazy)
    """A figure of ``width`` x ``height`` inches, drawn by the Agg canvas when saved (no pyplot)."""
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
    columns = min(len(panels), 3)  # more panels wrap onto further rows
    lines = math.ceil(len(panels) / columns)
    fig = new_figure(5 * columns, 4 * lines)
    axes = fig.subplots(lines, columns, squeeze=False).ravel()
    for ax in axes[len(panels):]:
        ax.set_visible(False)
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


def plot_confusion_matrix(confusion: torch.Tensor, class_names: list[str], out_png: Path, title: str = "confusion matrix",
                          xlabel: str = "predicted", ylabel: str = "true", shade_rows: bool = False) -> None:  # fmt: skip
    """Rows: true class, columns: predicted class, each named; counts written in the cells for up to 20 classes.

    The colour is the count, or with ``shade_rows`` the count's share of its row (where the objects of
    one true class went), so that a rare class reads as clearly as a frequent one.
    """
    n = len(class_names)
    size = min(12, 3 + 0.5 * n)
    fig = new_figure(size + 1, size)
    ax = fig.subplots()
    values = confusion.double()
    shade = values / values.sum(1, keepdim=True).clamp(min=1) if shade_rows else values
    image = ax.imshow(shade.numpy(), cmap="Blues", vmin=0, vmax=1 if shade_rows else None)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the row" if shade_rows else "count")
    small = None if n <= 20 else max(4, 8 - n // 20)  # every class is named, smaller when there are many
    ax.set_xticks(range(n), class_names, rotation=90, fontsize=small)
    ax.set_yticks(range(n), class_names, fontsize=small)
    if n <= 20:
        peak = float(shade.max()) or 1.0
        for i in range(n):
            for j in range(n):
                value = int(confusion[i, j])
                if value:
                    ax.text(j, i, str(value), ha="center", va="center",
                            color="white" if float(shade[i, j]) > peak / 2 else "black")
    ax.set(xlabel=xlabel, ylabel=ylabel)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
