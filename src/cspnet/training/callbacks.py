"""Callbacks and plugins: atomic checkpoints (last + best), the per-epoch CSV, the learning curves."""

from __future__ import annotations

import csv
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins import CheckpointIO


def atomic_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save`` to a temporary file in the target's folder, then ``os.replace``.

    A crash mid-write leaves the previous file intact: readers see the old or the new checkpoint,
    never a truncated one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class AtomicCheckpointIO(CheckpointIO):
    """Lightning's checkpoint I/O with atomic writes; reads with ``weights_only=False`` only for our own files."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        atomic_save(checkpoint, path)

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict:
        # Lightning's loop state holds plain Python containers; weights_only keeps loading code-free.
        return torch.load(path, map_location=map_location or "cpu", weights_only=True)

    def remove_checkpoint(self, path: Any) -> None:
        Path(path).unlink(missing_ok=True)


class RunCheckpoints(L.Callback):
    """``last.ckpt`` every ``every_n_steps`` optimizer steps and after each validation; ``best.ckpt``
    when ``val/top1`` improves. Both go through the trainer, hence through :class:`AtomicCheckpointIO`."""

    def __init__(self, folder: Path, every_n_steps: int = 0) -> None:
        self.folder, self.every_n_steps = Path(folder), every_n_steps
        self.best = -math.inf

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if self.every_n_steps and trainer.global_step % self.every_n_steps == 0:
            trainer.save_checkpoint(self.folder / "last.ckpt", weights_only=False)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        top1 = float(trainer.callback_metrics.get("val/top1", -math.inf))
        if top1 > self.best:
            self.best = top1
            trainer.save_checkpoint(self.folder / "best.ckpt", weights_only=False)
        trainer.save_checkpoint(self.folder / "last.ckpt", weights_only=False)

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = state["best"]


HISTORY_FIELDS = ("epoch", "train_loss", "val_loss", "val_top1", "val_top5", "lr", "elapsed_s")


class History(L.Callback):
    """Appends one row per epoch to ``history.csv`` (rank 0) and prints a one-line summary."""

    def __init__(self, path: Path, verbose: bool = True) -> None:
        self.path, self.verbose = Path(path), verbose
        self.start = time.perf_counter()
        self.elapsed_before = 0.0  # training time of the interrupted run(s), restored on resume

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.start

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        m = trainer.callback_metrics
        row = {
            "epoch": trainer.current_epoch + 1,
            "train_loss": _num(m.get("train/loss")),
            "val_loss": _num(m.get("val/loss")),
            "val_top1": _num(m.get("val/top1")),
            "val_top5": _num(m.get("val/top5")),
            "lr": _num(m.get("lr")),
            "elapsed_s": round(self.elapsed(), 1),
        }
        rows = [r for r in read_history(self.path) if int(r["epoch"]) < row["epoch"]]  # a resumed epoch replaces
        rows.append(row)
        tmp = self.path.with_suffix(".csv.tmp")
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=HISTORY_FIELDS)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, self.path)
        if self.verbose:
            print(
                f"epoch {row['epoch']}/{trainer.max_epochs}: train loss {row['train_loss']:.4f}  "
                f"val loss {row['val_loss']:.4f}  top1 {row['val_top1']:.2f}%  top5 {row['val_top5']:.2f}%  "
                f"({row['elapsed_s']:.0f}s)",
                flush=True,
            )

    def state_dict(self) -> dict[str, Any]:
        return {"elapsed": self.elapsed()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.elapsed_before = float(state.get("elapsed", 0.0))


def _num(value: Any) -> float:
    return float(value) if value is not None else float("nan")


def read_history(path: Path) -> list[dict[str, str]]:
    if not Path(path).is_file():
        return []
    with Path(path).open(newline="") as f:
        return list(csv.DictReader(f))


def plot_history(history_csv: Path, out_png: Path) -> None:
    """Loss and top-1 per epoch, side by side (matplotlib's Agg backend: no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_history(history_csv)
    if not rows:
        return
    epochs = [int(r["epoch"]) for r in rows]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
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
    plt.close(fig)
