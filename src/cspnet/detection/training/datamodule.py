"""The detection data: the embedded digits set, or COCO / YOLO files, served resumably.

The training order comes from :class:`~cspnet.data.ResumableSampler` and the batch size from
:class:`~cspnet.training.datamodule.Batching`, exactly as the classifier's (so a run resumes mid-epoch
exactly); batches are ``(uint8 images (N, 3, S, S), targets (M, 6))`` (:func:`collate_detection`).
"""

from __future__ import annotations

import warnings
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from cspnet.data import ResumableSampler
from cspnet.detection.data import (
    DetectionImages,
    DetectionSource,
    collate_detection,
    digits_detection_split,
    read_detection_source,
    read_yolo,
)
from cspnet.detection.training.config import DetectionTrainConfig
from cspnet.training.datamodule import Batching


def _hold_out(source: DetectionSource, fraction: float, seed: int = 0) -> tuple[DetectionSource, DetectionSource]:
    """A seeded split of one source's images (when the data has no validation split of its own)."""
    order = torch.randperm(len(source.records), generator=torch.Generator().manual_seed(seed)).tolist()
    cut = max(1, round(len(order) * fraction)) if len(order) > 1 else 0
    val = [source.records[i] for i in sorted(order[:cut])]
    train = [source.records[i] for i in sorted(order[cut:])]
    if not train:
        raise ValueError(f"{source.origin}: {len(source.records)} image(s) are too few to hold out a validation split")
    return (DetectionSource(train, source.classes, source.origin),
            DetectionSource(val, source.classes, source.origin + " (held out)"))  # fmt: skip


def load_detection_datasets(cfg: DetectionTrainConfig) -> tuple[Any, Any]:
    """``(train, val)`` data sets of ``cfg`` (its ``img_size`` resolved); both have ``.classes``."""
    assert cfg.img_size is not None
    if cfg.is_digits:
        return digits_detection_split(cfg.img_size)
    train = read_detection_source(cfg.data, "train", cfg.images)
    if cfg.val_data is not None:
        val = read_detection_source(cfg.val_data, "val", cfg.val_images)
    elif cfg.data.lower().endswith((".yaml", ".yml")) and _has_split(cfg.data, "val"):
        val = read_yolo(cfg.data, "val")
    else:
        train, val = _hold_out(train, cfg.val_fraction)
    train_set = DetectionImages(train, cfg.img_size)
    return train_set, DetectionImages(val, cfg.img_size, classes=train_set.classes)


def _has_split(path: str, split: str) -> bool:
    import yaml  # type: ignore[import-untyped]

    with open(path) as f:
        data = yaml.safe_load(f)
    return isinstance(data, dict) and data.get(split) is not None


class DetectionDataModule(L.LightningDataModule):
    """Serves the training split in a seeded order per epoch, resumable mid-epoch (see the classifier's)."""

    def __init__(self, cfg: DetectionTrainConfig, train: Dataset, val: Dataset) -> None:
        super().__init__()
        self.cfg, self.train_set, self.val_set = cfg, train, val

    def _loader(self, dataset: Dataset, sampler: Any, batch_size: int, drop_last: bool) -> DataLoader:
        workers = self.cfg.workers or 0
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, drop_last=drop_last,
                          persistent_workers=workers > 0, collate_fn=collate_detection)  # fmt: skip

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        assert trainer is not None
        size = len(self.train_set)  # type: ignore[arg-type]
        sampler = ResumableSampler(size, self.cfg.seed, True, trainer.world_size, trainer.global_rank)
        batching = Batching.of(size, self.cfg.batch_size, trainer.world_size)
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
        trainer = self.trainer
        assert trainer is not None
        indices = list(range(trainer.global_rank, len(self.val_set), trainer.world_size))  # type: ignore[arg-type]
        return self._loader(self.val_set, indices, self.cfg.batch_size, drop_last=False)
