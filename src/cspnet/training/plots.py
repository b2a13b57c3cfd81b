"""Figures written by the CLI (matplotlib's Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

import torch


def plot_confusion_matrix(confusion: torch.Tensor, class_names: list[str], out_png: Path) -> None:
    """Rows: true class, columns: predicted class; counts written in the cells for up to 20 classes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(class_names)
    size = min(12, 2 + 0.5 * n)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(confusion.numpy(), cmap="Blues")
    if n <= 20:
        ax.set_xticks(range(n), class_names, rotation=90)
        ax.set_yticks(range(n), class_names)
        peak = int(confusion.max()) or 1
        for i in range(n):
            for j in range(n):
                value = int(confusion[i, j])
                if value:
                    ax.text(j, i, value, ha="center", va="center", color="white" if value > peak / 2 else "black")
    ax.set(xlabel="predicted", ylabel="true", title="confusion matrix")
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
