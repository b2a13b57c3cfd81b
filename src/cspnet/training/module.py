"""The LightningModule: a registered model, its loss, metrics, optimizer, schedule and EMA."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
import torchmetrics
from torch import Tensor

from cspnet.data.transforms import BatchAugment, MixupCutmix, Normalize
from cspnet.training.config import TrainConfig
from cspnet.training.ema import ModelEma
from cspnet.training.schedule import WarmupCosine

# Step seeds: seed * _SEED_STRIDE + step * world + rank never collide for runs under 100k steps.
_SEED_STRIDE = 1_000_003


class ClassifierModule(L.LightningModule):
    """Trains ``cspnet.create_model(model, num_classes, **model_overrides)`` on uint8 image batches.

    Hyper-parameters (saved in every checkpoint, so ``eval`` and ``predict`` need nothing else):
    ``model_name``, ``model_overrides``, ``num_classes``, ``class_names``, ``img_size``, ``mean``,
    ``std`` and the whole resolved ``train_config``.

    Randomness (augmentation, mixup, dropout) is re-seeded from ``(seed, global step, rank)`` at
    every step, so a run resumed from a mid-epoch checkpoint draws exactly what an uninterrupted
    run would.
    """

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
        self.ema = ModelEma(self.model, cfg.ema_decay) if cfg.ema else None
        self.steps_per_epoch = steps_per_epoch
        top5 = min(5, num_classes)
        self.val_top1 = torchmetrics.Accuracy("multiclass", num_classes=num_classes, top_k=1)
        self.val_top5 = torchmetrics.Accuracy("multiclass", num_classes=num_classes, top_k=top5)
        self.val_loss = torchmetrics.MeanMetric()
        self.train_loss = torchmetrics.MeanMetric()

    # -- inputs ------------------------------------------------------------------------------
    def _prepare(self, images: Tensor, augment: bool) -> Tensor:
        x = images.float() / 255.0
        if augment:
            x = self.augment(x)
        x = self.normalize(x)
        return x.contiguous(memory_format=torch.channels_last) if self.cfg.channels_last else x

    def load_pretrained(self, path: str) -> None:
        """Start from the weights in ``path`` (fine-tuning); a classifier of another size is not loaded
        and stays freshly initialised, which is said at warning level."""
        import logging

        from cspnet.convert.checkpoint import load_checkpoint

        for note in load_checkpoint(self.model, path):
            level = logging.WARNING if "classifier not loaded" in note else logging.INFO
            logging.getLogger(__name__).log(level, "--pretrained %s: %s", path, note)
        if self.ema is not None:  # the average starts from the pretrained weights, not the random ones
            self.ema = ModelEma(self.model, self.cfg.ema_decay)

    def inference_model(self) -> torch.nn.Module:
        """The weights to evaluate and ship: the EMA when enabled, else the trained model."""
        return self.ema.module if self.ema is not None else self.model

    # -- training ----------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        if self.ema is not None:
            self.ema.module.to(self.device)

    def on_train_start(self) -> None:
        # A checkpoint restores the schedule's own length; a resumed run with more --epochs stretches it.
        for config in self.trainer.lr_scheduler_configs:
            for schedule in getattr(config.scheduler, "lr_lambdas", []):
                if isinstance(schedule, WarmupCosine):
                    schedule.warmup_steps, schedule.total_steps = self._schedule_steps()

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        seed = self.cfg.seed * _SEED_STRIDE + self.global_step * self.trainer.world_size + self.global_rank
        torch.manual_seed(seed)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, targets = batch
        x, soft = self.mix(self._prepare(images, augment=True), targets)
        logits = self.model(x)
        loss = torch.sum(-soft * F.log_softmax(logits.float(), dim=1), dim=1).mean()
        self.train_loss.update(loss.detach())
        self.log("train/loss", loss, prog_bar=True)
        self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"], prog_bar=True)
        return loss

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        # Here, not in on_train_batch_end: callbacks (the periodic checkpoint) run before the
        # module's on_train_batch_end, and the checkpoint must hold the EMA of this very step.
        if self.ema is not None:
            self.ema.update(self.model)

    def on_train_epoch_end(self) -> None:
        self.log("train/epoch_loss", self.train_loss.compute(), sync_dist=True)
        self.train_loss.reset()

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

    # -- optimisation ------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        cfg = self.cfg
        decay: list[torch.nn.Parameter] = []
        no_decay: list[torch.nn.Parameter] = []
        for p in self.model.parameters():
            (no_decay if p.ndim <= 1 else decay).append(p)  # no weight decay on norms and biases
        groups: list[dict[str, Any]] = [{"params": decay, "weight_decay": cfg.weight_decay},
                                         {"params": no_decay, "weight_decay": 0.0}]  # fmt: skip
        lr = float(cfg.lr) if cfg.lr is not None else 0.0  # resolved configs always have one
        optimizer: torch.optim.Optimizer
        if cfg.optimizer == "sgd":
            optimizer = torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, nesterov=True)
        else:
            optimizer = torch.optim.AdamW(groups, lr=lr)
        warmup, total = self._schedule_steps()
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(warmup, total, cfg.min_lr_ratio))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def _schedule_steps(self) -> tuple[int, int]:
        """(warm-up steps, total steps) of the learning-rate schedule."""
        total = self.steps_per_epoch * self.cfg.epochs
        return min(total, math.ceil(self.steps_per_epoch * self.cfg.warmup_epochs)), total

    # -- checkpoints -------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.ema is not None:
            checkpoint["ema_state_dict"] = self.ema.state_dict()
        # Where the data stands: batches of this epoch already trained (see ResumableSampler).
        progress = self.trainer.fit_loop.epoch_loop.batch_progress.current
        checkpoint["cspnet_position"] = {"epoch": self.current_epoch, "batches": progress.processed}  # type: ignore[attr-defined]
        # The epoch's running mean training loss (torchmetrics keeps it out of the state dict).
        checkpoint["cspnet_train_loss"] = {"mean_value": self.train_loss.mean_value.detach().cpu(),
                                           "weight": self.train_loss.weight.detach().cpu()}  # fmt: skip
        for key in ("model_name", "model_overrides", "num_classes", "class_names", "img_size", "mean", "std"):
            checkpoint[key] = self.hparams[key]  # top level too: readable without Lightning

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.ema is not None and "ema_state_dict" in checkpoint:
            self.ema.load_state_dict(checkpoint["ema_state_dict"])
        self.resume_position = checkpoint.get("cspnet_position")
        train_loss = checkpoint.get("cspnet_train_loss")
        if train_loss is not None and self.resume_position and self.resume_position["batches"]:
            self.train_loss.mean_value.copy_(train_loss["mean_value"])
            self.train_loss.weight.copy_(train_loss["weight"])
            self.train_loss._update_count = 1  # counted as updated: compute() then uses the restored state
