"""The LightningDataModule of every task: the task's data sets, a resumable seeded sampler, the task's collate."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

import lightning as L
from torch.utils.data import DataLoader, Dataset

from cspnet.data import ResumableSampler
from cspnet.training.config import RunConfig


class Examples(Protocol):
    """What training needs of a data set: sized, indexable, with class names."""

    classes: list[str]

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Any: ...


@dataclass(frozen=True)
class Batching:
    """How one rank's share of the training set is cut into batches.

    The batch shrinks to the share when the share is smaller (a 20-image folder with batch 64
    trains on batches of 20, not on nothing); the last, partial batch is kept when it holds at
    least half a batch and dropped otherwise (a tiny last batch gives noisy BatchNorm statistics).

    >>> Batching.of(num_train=1438, batch_size=64, world_size=1)
    Batching(batch_size=64, steps=22, drop_last=True)
    >>> Batching.of(num_train=100, batch_size=64, world_size=1)
    Batching(batch_size=64, steps=2, drop_last=False)
    >>> Batching.of(num_train=20, batch_size=64, world_size=2)
    Batching(batch_size=10, steps=1, drop_last=True)
    """

    batch_size: int
    steps: int  # optimizer steps per epoch
    drop_last: bool

    @classmethod
    def of(cls, num_train: int, batch_size: int, world_size: int) -> Batching:
        per_rank = -(-num_train // world_size)  # ResumableSampler pads every rank to this
        batch = max(1, min(batch_size, per_rank))
        full, rest = divmod(per_rank, batch)
        keep_last = rest > 0 and 2 * rest >= batch
        return cls(batch, full + keep_last, not keep_last)


def steps_per_epoch(num_train: int, batch_size: int, world_size: int) -> int:
    """Optimizer steps per epoch (see :class:`Batching`)."""
    return Batching.of(num_train, batch_size, world_size).steps


class RunDataModule(L.LightningDataModule):
    """Serves a task's training split in a seeded order per epoch, resumable mid-epoch.

    ``resume_position`` (set from the checkpoint by the training module) makes the first epoch
    after a resume skip the batches the interrupted run had already trained on. ``collate`` is the
    task's ``collate_fn`` (``None``: PyTorch's default).
    """

    def __init__(self, cfg: RunConfig, train: Examples, val: Examples,
                 collate: Callable[[Sequence[Any]], Any] | None = None) -> None:  # fmt: skip
        super().__init__()
        self.cfg, self.train_set, self.val_set, self.collate = cfg, train, val, collate

    def _loader(self, dataset: Examples, sampler: Any, batch_size: int, drop_last: bool) -> DataLoader:
        workers = self.cfg.workers or 0
        return DataLoader(
            cast(Dataset, dataset),
            batch_size=batch_size,
            sampler=sampler,
            num_workers=workers,
            drop_last=drop_last,
            persistent_workers=workers > 0,
            collate_fn=self.collate,
        )

    def _trainer(self) -> L.Trainer:
        if self.trainer is None:
            raise RuntimeError("the data module is used by a Trainer only")
        return self.trainer

    def train_dataloader(self) -> DataLoader:
        trainer = self._trainer()
        sampler = ResumableSampler(
            len(self.train_set), self.cfg.seed, True, trainer.world_size, trainer.global_rank
        )
        batching = Batching.of(len(self.train_set), self.cfg.batch_size, trainer.world_size)
        if batching.batch_size < self.cfg.batch_size and trainer.is_global_zero:
            warnings.warn(f"--batch-size {self.cfg.batch_size} is larger than the {batching.batch_size} training "
                          f"images per process: training on batches of {batching.batch_size}", stacklevel=1)
        position = getattr(trainer.lightning_module, "resume_position", None)
        if position:
            sampler.skip(position["epoch"], position["batches"] * batching.batch_size)
            # A run resumed mid-epoch may draw its first iterator before Lightning's set_epoch: give the
            # sampler the epoch now, or it would serve epoch 0's order without the skip.
            sampler.set_epoch(position["epoch"])
        return self._loader(self.train_set, sampler, batching.batch_size, batching.drop_last)

    def val_dataloader(self) -> DataLoader:
        trainer = self._trainer()
        # Padding would count some images twice; the val set is split without padding instead.
        indices = list(range(trainer.global_rank, len(self.val_set), trainer.world_size))
        return self._loader(self.val_set, indices, max(1, min(self.cfg.batch_size, len(indices))), drop_last=False)
