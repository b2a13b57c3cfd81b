"""Callbacks and plugins of a training run: atomic checkpoints (last + best) and the progress bar.

``history.csv`` has its own module (:mod:`cspnet.training.history`), the figures theirs
(:mod:`cspnet.training.plots`).
"""

from __future__ import annotations

import errno
import math
from pathlib import Path
from typing import Any

import lightning as L
from lightning.fabric.plugins import CheckpointIO
from lightning.pytorch.callbacks import TQDMProgressBar

from cspnet.training.files import RunFolderError, atomic_save

__all__ = ["AtomicCheckpointIO", "EpochProgressBar", "RunCheckpoints", "atomic_save"]

_STORAGE_ERRORS = {errno.ENOSPC: "the disk is full", errno.EROFS: "the file system is read-only",
                   errno.EACCES: "permission denied", errno.EDQUOT: "the disk quota is exceeded",
                   errno.EFBIG: "the file is larger than this process may write (ulimit -f)"}  # fmt: skip


class AtomicCheckpointIO(CheckpointIO):
    """Lightning's checkpoint I/O with atomic writes, and reads with ``weights_only=True``.

    Lightning's loop state is plain Python containers and tensors, so a training checkpoint loads
    without unpickling any code. A write that fails for lack of space or permission raises
    :class:`~cspnet.training.files.RunFolderError` saying so; the previous file stays as it was.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        try:
            atomic_save(checkpoint, path)
        except OSError as exc:
            if exc.errno not in _STORAGE_ERRORS:
                raise
            raise RunFolderError(
                f"cannot write {path}: {_STORAGE_ERRORS[exc.errno]}; the previous checkpoint is intact"
            ) from exc

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict:
        from cspnet.convert import load_torch_file

        return load_torch_file(path, "checkpoint")

    def remove_checkpoint(self, path: Any) -> None:
        Path(path).unlink(missing_ok=True)


class RunCheckpoints(L.Callback):
    """``last.ckpt`` every ``every_n_steps`` optimizer steps and after each validation; ``best.ckpt``
    when ``val/<monitor>`` (default ``val/top1``) improves. Both go through the trainer, hence through :class:`AtomicCheckpointIO`.

    No mid-epoch checkpoint is written on an epoch's last batch: the epoch-end one follows after
    validation, and a checkpoint between the two (training done, validation not) is the one point
    from which Lightning cannot resume cleanly. A run killed there resumes from the checkpoint
    before and redoes those steps, drawing the same data and random numbers.

    ``last_metrics`` holds the latest validation metrics; they are part of the checkpoint, so a
    resumed run that has nothing left to train still reports them.
    """

    def __init__(self, folder: Path, every_n_steps: int = 0, monitor: str = "top1") -> None:
        self.folder, self.every_n_steps = Path(folder), every_n_steps
        self.monitor = monitor  # the validation metric (without "val/") whose best value best.ckpt holds
        self.best = -math.inf
        self.last_metrics: dict[str, float] = {}

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:  # fmt: skip
        last_of_epoch = batch_idx + 1 >= trainer.num_training_batches
        if self.every_n_steps and trainer.global_step % self.every_n_steps == 0 and not last_of_epoch:
            trainer.save_checkpoint(self.folder / "last.ckpt", weights_only=False)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        m = trainer.callback_metrics
        self.last_metrics = {k.removeprefix("val/"): float(v) for k, v in m.items() if k.startswith("val/")}
        value = self.last_metrics.get(self.monitor, -math.inf)
        if value > self.best:
            self.best = value
            trainer.save_checkpoint(self.folder / "best.ckpt", weights_only=False)
        trainer.save_checkpoint(self.folder / "last.ckpt", weights_only=False)

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "last_metrics": self.last_metrics}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = state["best"]
        self.last_metrics = dict(state.get("last_metrics", {}))


class EpochProgressBar(TQDMProgressBar):
    """Lightning's bar, counting epochs from 1 of N like the summary lines (Lightning counts from 0)."""

    def on_train_epoch_start(self, trainer: L.Trainer, *_: Any) -> None:
        super().on_train_epoch_start(trainer)
        self.train_progress_bar.set_description(f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}")
