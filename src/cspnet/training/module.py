"""The classifier's LightningModule: its inputs, loss and metrics on :class:`ResumableModule` (optimizer,
schedule, EMA, per-step seeds and the checkpoint state of exact resume)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
import torchmetrics
from torch import Tensor

from cspnet.data.transforms import BatchAugment, MixupCutmix, Normalize
from cspnet.training.config import TrainConfig
from cspnet.training.resumable import _SEED_STRIDE, ResumableModule

__all__ = ["_SEED_STRIDE", "ClassifierModule"]


class ClassifierModule(ResumableModule):
    """Trains ``cspnet.create_model(model, num_classes, **model_overrides)`` on uint8 image batches.

    Hyper-parameters (saved in every checkpoint, so ``eval`` and ``predict`` need nothing else):
    ``model_name``, ``model_overrides``, ``num_classes``, ``class_names``, ``img_size``, ``mean``,
    ``std`` and the whole resolved ``train_config``.

    Randomness (augmentation, mixup, dropout) is re-seeded from ``(seed, global step, rank)`` at
    every step, so a run resumed from a mid-epoch checkpoint draws exactly what an uninterrupted
    run would.
    """

    CHECKPOINT_KEYS = (*ResumableModule.CHECKPOINT_KEYS, "mean", "std")

    def __init__(
        self,
        model_name: str,
        model_overrides: dict[str, Any],
        num_classes: int,
        class_names: list[str],
        img_size: int,
        mean: list[float],
        std: list[float],
        train_config: dict[str, Any],
        steps_per_epoch: int,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        from cspnet import create_model

        cfg = TrainConfig.from_dict(train_config)
        self.cfg = cfg
        self.model = create_model(model_name, num_classes=num_classes, **model_overrides)
        if cfg.grad_checkpointing:
            self.model.set_grad_checkpointing(True)  # type: ignore[operator]
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.normalize = Normalize(mean, std)
        self.augment = BatchAugment(img_size, (cfg.crop_scale or 1.0, 1.0), cfg.hflip or 0.0, cfg.jitter)
        self.mix = MixupCutmix(num_classes, cfg.mixup, cfg.cutmix, cfg.label_smoothing)
        self.steps_per_epoch = steps_per_epoch
        self.init_training_state()
        top5 = min(5, num_classes)
        self.val_top1 = torchmetrics.Accuracy("multiclass", num_classes=num_classes, top_k=1)
        self.val_top5 = torchmetrics.Accuracy("multiclass", num_classes=num_classes, top_k=top5)
        self.val_loss = torchmetrics.MeanMetric()

    # -- inputs ------------------------------------------------------------------------------
    def _prepare(self, images: Tensor, augment: bool) -> Tensor:
        x = images.float() / 255.0
        if augment:
            x = self.augment(x)
        x = self.normalize(x)
        return x.contiguous(memory_format=torch.channels_last) if self.cfg.channels_last else x

    # -- training ----------------------------------------------------------------------------
    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, targets = batch
        x, soft = self.mix(self._prepare(images, augment=True), targets)
        logits = self.model(x)
        loss = torch.sum(-soft * F.log_softmax(logits.float(), dim=1), dim=1).mean()
        self.train_loss.update(loss.detach())
        self.log("train/loss", loss, prog_bar=True)
        self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"], prog_bar=True)
        return loss

    # -- validation --------------------------------------------------------------------------
    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        images, targets = batch
        logits = self.inference_model()(self._prepare(images, augment=False)).float()
        self.val_loss.update(F.cross_entropy(logits, targets, reduction="none"))
        self.val_top1.update(logits, targets)
        self.val_top5.update(logits, targets)

    def on_validation_epoch_end(self) -> None:
        # Percent, like the paper; torchmetrics syncs the counts over processes.
        self.log("val/top1", self.val_top1.compute() * 100, sync_dist=False, prog_bar=True)
        self.log("val/top5", self.val_top5.compute() * 100, sync_dist=False)
        self.log("val/loss", self.val_loss.compute(), sync_dist=False, prog_bar=True)
        for metric in (self.val_top1, self.val_top5, self.val_loss):
            metric.reset()
