"""``history.csv``: one row per finished epoch, kept in the checkpoints so that no row is ever lost.

The rows live in the :class:`History` callback's state, which every checkpoint carries (with the
running sums of the epoch's loss parts, so a run resumed mid-epoch reports the same means). The file is
rewritten from that state (atomically) after each validation and when a run resumes, so a row
that was written after the last checkpoint of a killed run is dropped and written again when its
epoch is re-run, and a row whose write failed (disk full) is written again from the checkpoint.
"""

from __future__ import annotations

import csv
import io
import math
import time
from pathlib import Path
from typing import Any

import lightning as L

from cspnet.training.files import atomic_write_bytes


def read_history(path: str | Path) -> list[dict[str, str]]:
    """The rows of a ``history.csv`` as strings (an absent file has none)."""
    if not Path(path).is_file():
        return []
    with Path(path).open(newline="") as f:
        return list(csv.DictReader(f))


def write_history(path: str | Path, rows: list[dict[str, Any]], fields: tuple[str, ...]) -> None:
    """Write ``rows`` as ``history.csv`` with columns ``fields``, replacing the file atomically."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(path, text.getvalue().encode())


def _num(value: Any) -> float | None:
    """A logged metric as a float; ``None`` (an empty CSV cell) when absent or not finite."""
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


class History(L.Callback):
    """Keeps one row per epoch (rank 0 writes ``history.csv``) and prints the task's one-line summary.

    The columns are the task's validation metrics (:attr:`~cspnet.training.tasks.Task.val_metrics`,
    logged as ``val/<name>``, written as ``val_<name>``) and the mean over the epoch's training steps
    of each part of its loss (:attr:`~cspnet.training.tasks.Task.loss_parts`, logged as
    ``train/<part>_loss``, written as ``train_<part>_loss``; this process's steps). Put it before
    :class:`~cspnet.training.callbacks.RunCheckpoints` in the trainer's callbacks: the epoch-end
    checkpoint must already hold this epoch's row.
    """

    def __init__(self, path: Path, task: Any, verbose: bool = True) -> None:
        self.path, self.task, self.verbose = Path(path), task, verbose
        self.rows: list[dict[str, Any]] = []
        self.start = time.perf_counter()
        self.elapsed_before = 0.0  # training time of the interrupted run(s), restored on resume
        # The epoch whose loss parts are being summed, and their (sum, steps): reset when a new epoch's
        # first step ends, not at the epoch start, which a run resumed mid-epoch also passes through.
        self.parts_epoch = -1
        self.part_sums: dict[str, list[float]] = {}

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.start

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:  # a resumed run: the file is what the checkpoint says
            write_history(self.path, self.rows, self.fields)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:  # fmt: skip
        if not self.task.loss_parts:
            return
        if self.parts_epoch != trainer.current_epoch:
            self.parts_epoch, self.part_sums = trainer.current_epoch, {}
        m = trainer.callback_metrics
        for part in self.task.loss_parts:
            value = _num(m.get(f"train/{part}_loss"))
            if value is not None:
                total = self.part_sums.setdefault(part, [0.0, 0])
                total[0] += value
                total[1] += 1

    def _part_means(self, epoch: int) -> dict[str, float | None]:
        sums = self.part_sums if self.parts_epoch == epoch else {}
        return {f"train_{part}_loss": (sums[part][0] / sums[part][1] if part in sums else None)
                for part in self.task.loss_parts}  # fmt: skip

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        m = trainer.callback_metrics
        row: dict[str, Any] = {"epoch": trainer.current_epoch + 1, "train_loss": _num(m.get("train/loss"))}
        row.update(self._part_means(trainer.current_epoch))
        row.update({f"val_{name}": _num(m.get(f"val/{name}")) for name in self.task.val_metrics})
        row.update({"lr": _num(m.get("lr")), "elapsed_s": round(self.elapsed(), 1)})
        self.rows = [r for r in self.rows if int(r["epoch"]) < row["epoch"]] + [row]
        if not trainer.is_global_zero:
            return
        write_history(self.path, self.rows, self.fields)
        if self.verbose:
            line = self.task.epoch_summary(row, trainer.max_epochs)
            bar = trainer.progress_bar_callback
            if bar is not None and getattr(bar, "is_enabled", False):  # above the live bars, not through them
                bar.print(line)
            else:
                print(line, flush=True)

    @property
    def fields(self) -> tuple[str, ...]:
        """The columns of ``history.csv``."""
        parts = (f"train_{part}_loss" for part in self.task.loss_parts)
        return ("epoch", "train_loss", *parts, *(f"val_{name}" for name in self.task.val_metrics), "lr", "elapsed_s")

    def state_dict(self) -> dict[str, Any]:
        return {"elapsed": self.elapsed(), "rows": self.rows, "parts_epoch": self.parts_epoch,
                "part_sums": {k: list(v) for k, v in self.part_sums.items()}}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.elapsed_before = float(state.get("elapsed", 0.0))
        self.start = time.perf_counter()
        self.rows = list(state.get("rows", []))
        self.parts_epoch = int(state.get("parts_epoch", -1))
        self.part_sums = {k: [float(v[0]), int(v[1])] for k, v in state.get("part_sums", {}).items()}
