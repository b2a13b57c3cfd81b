"""The LightningDataModule: digits or an image folder, a resumable seeded sampler, plain loaders."""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from cspnet.data import ResumableSampler, load_digits_split, load_folder_split
from cspnet.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from cspnet.training.config import TrainConfig

DIGITS_MEAN = (0.19, 0.19, 0.19)  # measured on the 16x16 digits; the ink is sparse
DIGITS_STD = (0.33, 0.33, 0.33)


def load_datasets(cfg: TrainConfig) -> tuple[Dataset, Dataset]:
    if cfg.is_digits:
        return load_digits_split(cfg.img_size)
    return load_folder_split(cfg.data, cfg.img_size, cfg.val_fraction, seed=0)


def normalization(cfg: TrainConfig) -> tuple[list[float], list[float]]:
    mean, std = (DIGITS_MEAN, DIGITS_STD) if cfg.is_digits else (IMAGENET_MEAN, IMAGENET_STD)
    return list(mean), list(std)


def steps_per_epoch(num_train: int, batch_size: int, world_size: int) -> int:
    """Optimizer steps per epoch: every rank drops its last incomplete batch (if it has a full one)."""
    per_rank = -(-num_train // world_size)
    return max(1, per_rank // batch_size)


class ImageDataModule(L.LightningDataModule):
    """Serves the training split in a seeded order per epoch, resumable mid-epoch.

    ``resume_position`` (set from the checkpoint by the training module) makes the first epoch
    after a resume skip the batches the interrupted run had already trained on.
    """

    def __init__(self, cfg: TrainConfig, train: Dataset, val: Dataset) -> None:
        super().__init__()
        self.cfg, self.train_set, self.val_set = cfg, train, val

    def _loader(self, dataset: Dataset, sampler: torch.utils.data.Sampler, drop_last: bool) -> DataLoader:
        workers = self.cfg.workers or 0
        return DataLoader(
            dataset,
            batch_size=self.cfg.batch_size,
            sampler=sampler,
            num_workers=workers,
            drop_last=drop_last,
            persistent_workers=workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        sampler = ResumableSampler(
            len(self.train_set), self.cfg.seed, True, trainer.world_size, trainer.global_rank
        )
        position = getattr(trainer.lightning_module, "resume_position", None)
        if position:
            sampler.skip(position["epoch"], position["batches"] * self.cfg.batch_size)
        drop_last = sampler.per_rank >= self.cfg.batch_size
        return self._loader(self.train_set, sampler, drop_last)

    def val_dataloader(self) -> DataLoader:
        trainer = self.trainer
        # Padding would count some images twice; the val set is split without padding instead.
        indices = list(range(trainer.global_rank, len(self.val_set), trainer.world_size))
        return self._loader(self.val_set, indices, drop_last=False)
