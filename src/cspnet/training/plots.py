"""Figures of a training run: the learning curves and the confusion matrix.

Drawn on :class:`matplotlib.figure.Figure` objects rendered by the Agg canvas, never through
``pyplot``: the library neither switches matplotlib's process-wide backend nor keeps figures alive.
"""

from __future__ import annotations

from pathlib import Path

import torch

from cspnet.training.history import read_history


def _figure(width: float, height: float):  # -> matplotlib.figure.Figure (import kept lazy)
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def plot_history(history_csv: Path, out_png: Path) -> None:
    """Loss and top-1 per epoch, side by side; nothing is written for an empty history."""
    rows = read_history(history_csv)
    if not rows:
        return
    epochs = [int(r["epoch"]) for r in rows]
    fig = _figure(10, 4)
    ax_loss, ax_acc = fig.subplots(1, 2)
    ax_loss.plot(epochs, [float(r["train_loss"]) for r in rows], marker="o", label="train (last batch)")
    ax_loss.plot(epochs, [float(r["val_loss"]) for r in rows], marker="o", label="validation")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_loss.legend()
    ax_acc.plot(epochs, [float(r["val_top1"]) for r in rows], marker="o", label="top-1")
    ax_acc.plot(epochs, [float(r["val_top5"]) for r in rows], marker="o", label="top-5")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="validation accuracy")
    ax_acc.legend()
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)


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
