"""The LightningModule of a detection run: a registered detector, YOLOv3's loss, COCO metrics, EMA.

It shares :class:`cspnet.training.resumable.ResumableModule` with the classifier: the same
optimizers, warm-up + cosine schedule, EMA, per-step seeding (a resumed run draws the same
augmentation) and the same checkpoint contents (the data position, the running training loss), so
exact resume is the same code.
"""

from __future__ import annotations

from typing import Any

import torch
import torchmetrics
from torch import Tensor

from cspnet.detection.data import BoxAugment, Mosaic
from cspnet.detection.loss import YoloLoss
from cspnet.detection.metrics import coco_metrics
from cspnet.detection.training.config import DetectionTrainConfig
from cspnet.models.detectors.model import Detector
from cspnet.ops.postprocess import postprocess_numpy
from cspnet.ops.thresholds import EVALUATE
from cspnet.training.resumable import ResumableModule


def split_targets(targets: Tensor, batch: int) -> list[dict[str, Tensor]]:
    """``(M, 6)`` batch rows -> per image ``{"boxes": (K, 4), "labels": (K,)}`` on the CPU."""
    targets = targets.detach().cpu()
    return [{"boxes": targets[targets[:, 0] == i, 2:6].float(), "labels": targets[targets[:, 0] == i, 1].long()}
            for i in range(batch)]  # fmt: skip


class DetectorModule(ResumableModule):
    """Trains ``cspnet.create_model(model, num_classes, **model_overrides)`` (a detector) on box batches.

    Hyper-parameters saved in every checkpoint: ``model_name``, ``model_overrides``, ``num_classes``,
    ``class_names``, ``img_size`` and the resolved ``train_config``.
    """

    model: Detector

    def __init__(self, model_name: str, model_overrides: dict[str, Any], num_classes: int, class_names: list[str],
                 img_size: int, train_config: dict[str, Any], steps_per_epoch: int) -> None:  # fmt: skip
        super().__init__()
        self.save_hyperparameters()
        from cspnet import create_model

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
        self.mosaic = Mosaic(cfg.mosaic) if cfg.augment and cfg.mosaic > 0 else None
        self.steps_per_epoch = steps_per_epoch
        self.init_training_state()
        self.val_loss = torchmetrics.MeanMetric()
        self._val_truth: list[dict[str, Tensor]] = []
        self._val_found: list[dict[str, Tensor]] = []
        self.coco: dict[str, Any] = {}  # the last validation's full COCO metrics (per-class AP included)

    # -- training ----------------------------------------------------------------------------
    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, targets = batch
        x = images.float() / 255.0
        if self.mosaic is not None:  # before the affine: the mosaic is then zoomed and shifted as one image
            x, targets = self.mosaic(x, targets)
        if self.augment is not None:
            x, targets = self.augment(x, targets)
        loss, parts = self.loss(self.model(x), targets, (x.shape[-2], x.shape[-1]))
        self.train_loss.update(loss.detach())
        self.log("train/loss", loss, prog_bar=True)
        for name, value in parts.items():
            self.log(f"train/{name}_loss", value)
        self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"], prog_bar=True)
        return loss

    # -- validation --------------------------------------------------------------------------
    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        images, targets = batch
        x = images.float() / 255.0
        model = self.inference_model()
        outputs = model(x)
        loss, _ = self.loss(outputs, targets, (x.shape[-2], x.shape[-1]))
        self.val_loss.update(loss.detach(), weight=images.shape[0])
        boxes, scores = self.model.decode(outputs)
        self._val_found += postprocess_numpy(boxes, scores, (x.shape[-2], x.shape[-1]), self.cfg.eval_conf, self.cfg.eval_iou,
                                      self.cfg.max_detections, max_candidates=EVALUATE.max_candidates)  # fmt: skip
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

    # -- checkpoints -------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["cspnet_coco"] = self.coco
        checkpoint["task"] = "detection"

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self.coco = dict(checkpoint.get("cspnet_coco", {}))
