"""The LightningModule of a detection run: a registered detector, YOLOv3's loss, COCO metrics, EMA.

It mirrors :class:`cspnet.training.module.ClassifierModule`: the same optimizers, warm-up + cosine
schedule, EMA, per-step seeding (a resumed run draws the same augmentation) and the same
checkpoint contents (the data position, the running training loss), so exact resume works alike.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
import torchmetrics
from torch import Tensor

from cspnet.detection.data import BoxAugment
from cspnet.detection.loss import YoloLoss
from cspnet.detection.metrics import coco_metrics
from cspnet.detection.training.config import DetectionTrainConfig
from cspnet.detection.training.inference import detections
from cspnet.training.ema import ModelEma
from cspnet.training.module import _SEED_STRIDE
from cspnet.training.schedule import WarmupCosine

EVAL_CANDIDATES = 1000  # the best-scored boxes per image entering NMS at evaluation (of ~1000 x classes)


def split_targets(targets: Tensor, batch: int) -> list[dict[str, Tensor]]:
    """``(M, 6)`` batch rows -> per image ``{"boxes": (K, 4), "labels": (K,)}`` on the CPU."""
    targets = targets.detach().cpu()
    return [{"boxes": targets[targets[:, 0] == i, 2:6].float(), "labels": targets[targets[:, 0] == i, 1].long()}
            for i in range(batch)]  # fmt: skip


class DetectorModule(L.LightningModule):
    """Trains ``cspnet.create_model(model, num_classes, **model_overrides)`` (a detector) on box batches.

    Hyper-parameters saved in every checkpoint: ``model_name``, ``model_overrides``, ``num_classes``,
    ``class_names``, ``img_size`` and the resolved ``train_config``.
    """

    def __init__(self, model_name: str, model_overrides: dict[str, Any], num_classes: int, class_names: list[str],
                 img_size: int, train_config: dict[str, Any], steps_per_epoch: int) -> None:  # fmt: skip
        super().__init__()
        self.save_hyperparameters()
        from cspnet import create_model
        from cspnet.detection.model import Detector

        cfg = DetectionTrainConfig.from_dict(train_config)
        self.cfg = cfg
        model = create_model(model_name, num_classes=num_classes, **model_overrides)
        if not isinstance(model, Detector):
            raise ValueError(f"--model {model_name} is not a detector (see `cspnet models --task detection`)")
        self.model = model
        self.loss = YoloLoss(model.get_buffer("anchors"), model.strides, num_classes, cfg.box_loss, cfg.ignore_threshold,
                             anchor_threshold=cfg.anchor_threshold)
        hflip = cfg.hflip or 0.0
        self.augment = BoxAugment((cfg.scale_min, cfg.scale_max), cfg.translate, hflip, cfg.jitter) if cfg.augment else None
        self.ema = ModelEma(self.model, cfg.ema_decay) if cfg.ema else None
        self.steps_per_epoch = steps_per_epoch
        self.train_loss = torchmetrics.MeanMetric()
        self.val_loss = torchmetrics.MeanMetric()
        self._val_truth: list[dict[str, Tensor]] = []
        self._val_found: list[dict[str, Tensor]] = []
        self.coco: dict[str, Any] = {}  # the last validation's full COCO metrics (per-class AP included)

    def inference_model(self) -> torch.nn.Module:
        """The weights to evaluate and ship: the EMA when enabled, else the trained model."""
        return self.ema.module if self.ema is not None else self.model

    def load_pretrained(self, path: str) -> None:
        """Start from the weights in ``path``; a head for other classes stays freshly initialised."""
        import logging

        from cspnet.convert.checkpoint import load_checkpoint

        for note in load_checkpoint(self.model, path):
            logging.getLogger(__name__).info("--pretrained %s: %s", path, note)
        if self.ema is not None:
            self.ema = ModelEma(self.model, self.cfg.ema_decay)

    # -- training ----------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        if self.ema is not None:
            self.ema.module.to(self.device)

    def on_train_start(self) -> None:
        for config in self.trainer.lr_scheduler_configs:
            for schedule in getattr(config.scheduler, "lr_lambdas", []):
                if isinstance(schedule, WarmupCosine):
                    schedule.warmup_steps, schedule.total_steps = self._schedule_steps()

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        seed = self.cfg.seed * _SEED_STRIDE + self.global_step * self.trainer.world_size + self.global_rank
        torch.manual_seed(seed)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, targets = batch
        x = images.float() / 255.0
        if self.augment is not None:
            x, targets = self.augment(x, targets)
        loss, parts = self.loss(self.model(x), targets, (x.shape[-2], x.shape[-1]))
        self.train_loss.update(loss.detach())
        self.log("train/loss", loss, prog_bar=True)
        for name, value in parts.items():
            self.log(f"train/{name}_loss", value)
        self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"], prog_bar=True)
        return loss

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        if self.ema is not None:  # here, so the step's periodic checkpoint holds this step's EMA
            self.ema.update(self.model)

    def on_train_epoch_end(self) -> None:
        self.log("train/epoch_loss", self.train_loss.compute(), sync_dist=True)
        self.train_loss.reset()

    # -- validation --------------------------------------------------------------------------
    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        images, targets = batch
        x = images.float() / 255.0
        model = self.inference_model()
        outputs = model(x)
        loss, _ = self.loss(outputs, targets, (x.shape[-2], x.shape[-1]))
        self.val_loss.update(loss.detach(), weight=images.shape[0])
        boxes, scores = self.model.decode(outputs)
        self._val_found += detections(boxes, scores, (x.shape[-2], x.shape[-1]), self.cfg.eval_conf, self.cfg.eval_iou,
                                      self.cfg.max_detections, max_candidates=EVAL_CANDIDATES)  # fmt: skip
        self._val_truth += split_targets(targets, images.shape[0])

    def on_validation_epoch_end(self) -> None:
        truth, found = self._val_truth, self._val_found
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, (truth, found))
            truth = [t for part in gathered for t in part[0]]
            found = [f for part in gathered for f in part[1]]
        self.coco = {**coco_metrics(truth, found, list(self.hparams["class_names"])), "images": len(truth)}
        for name in ("map", "map50", "map75", "mar100"):
            value = self.coco[name]
            self.log(f"val/{name}", float("nan") if value is None else value, prog_bar=name in ("map", "map50"))
        self.log("val/loss", self.val_loss.compute(), prog_bar=True)
        self.val_loss.reset()
        self._val_truth, self._val_found = [], []

    # -- optimisation ------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        cfg = self.cfg
        decay: list[torch.nn.Parameter] = []
        no_decay: list[torch.nn.Parameter] = []
        for p in self.model.parameters():
            (no_decay if p.ndim <= 1 else decay).append(p)
        groups: list[dict[str, Any]] = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        assert cfg.lr is not None
        optimizer: torch.optim.Optimizer
        if cfg.optimizer == "sgd":
            optimizer = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
        else:
            optimizer = torch.optim.AdamW(groups, lr=cfg.lr)
        warmup, total = self._schedule_steps()
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(warmup, total, cfg.min_lr_ratio))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def _schedule_steps(self) -> tuple[int, int]:
        total = self.steps_per_epoch * self.cfg.epochs
        return min(total, math.ceil(self.steps_per_epoch * self.cfg.warmup_epochs)), total

    # -- checkpoints -------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.ema is not None:
            checkpoint["ema_state_dict"] = self.ema.state_dict()
        progress = self.trainer.fit_loop.epoch_loop.batch_progress.current
        checkpoint["cspnet_position"] = {"epoch": self.current_epoch, "batches": progress.processed}  # type: ignore[attr-defined]
        checkpoint["cspnet_train_loss"] = {"mean_value": self.train_loss.mean_value.detach().cpu(),
                                           "weight": self.train_loss.weight.detach().cpu()}  # fmt: skip
        checkpoint["cspnet_coco"] = self.coco
        checkpoint["task"] = "detection"
        for key in ("model_name", "model_overrides", "num_classes", "class_names", "img_size"):
            checkpoint[key] = self.hparams[key]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.ema is not None and "ema_state_dict" in checkpoint:
            self.ema.load_state_dict(checkpoint["ema_state_dict"])
        self.coco = dict(checkpoint.get("cspnet_coco", {}))
        self.resume_position = checkpoint.get("cspnet_position")
        train_loss = checkpoint.get("cspnet_train_loss")
        if train_loss is not None and self.resume_position and self.resume_position["batches"]:
            self.train_loss.mean_value.copy_(train_loss["mean_value"])
            self.train_loss.weight.copy_(train_loss["weight"])
            self.train_loss._update_count = 1
