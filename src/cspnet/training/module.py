"""The classifier's LightningModule: its augmentation, loss and metrics on
:class:`~cspnet.training.resumable.ResumableModule` (the model, optimizer, schedule, EMA, per-step
seeds and the checkpoint state of exact resume)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
import torchmetrics
from torch import Tensor

from cspnet.data.transforms import BatchAugment, MixupCutmix
from cspnet.training.config import TrainConfig
from cspnet.training.resumable import ResumableModule

__all__ = ["ClassifierModule"]


class ClassifierModule(ResumableModule):
    """Trains a registered classifier on uint8 image batches ``(images, class indices)``."""

    TASK = "classification"
    CONFIG = TrainConfig

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cfg, num_classes = self.cfg, self.hparams["num_classes"]
        self.augment = BatchAugment(self.hparams["img_size"], (cfg.crop_scale or 1.0, 1.0), cfg.hflip or 0.0, cfg.jitter)
        self.mix = MixupCutmix(num_classes, cfg.mixup, cfg.cutmix, cfg.label_smoothing)
        self.val_top1 = torchmetrics.Accuracy("multiclass", num_classes=num_classes, top_k=1)
        self.val_top5 = torchmetrics.Accuracy("multiclass", num_classes=num_classes, top_k=min(5, num_classes))
        self.val_loss = torchmetrics.MeanMetric()

    # -- training ----------------------------------------------------------------------------
    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, targets = batch
        x, soft = self.mix(self.model_input(self.augment(images.float() / 255.0)), targets)
        logits = self.model(x)
        return self.track_loss(torch.sum(-soft * F.log_softmax(logits.float(), dim=1), dim=1).mean())

    # -- validation --------------------------------------------------------------------------
    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        images, targets = batch
        logits = self.inference_model()(self.model_input(images)).float()
        self.val_loss.update(F.cross_entropy(logits, targets, reduction="none"))
        self.val_top1.update(logits, targets)
        self.val_top5.update(logits, targets)

    def on_validation_epoch_end(self) -> None:
        # Percent, like the paper; torchmetrics syncs the counts over processes.
        loss = self.val_loss.compute()
        self.check_finite_validation(loss)
        self.log("val/top1", self.val_top1.compute() * 100, sync_dist=False, prog_bar=True)
        self.log("val/top5", self.val_top5.compute() * 100, sync_dist=False)
        self.log("val/loss", loss, sync_dist=False, prog_bar=True)
        for metric in (self.val_top1, self.val_top5, self.val_loss):
            metric.reset()
