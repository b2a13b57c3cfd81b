"""The detector's LightningModule: box augmentation, YOLOv3's loss and COCO metrics on
:class:`~cspnet.training.resumable.ResumableModule` (the model, optimizer, schedule, EMA, per-step
seeds and the checkpoint state of exact resume, shared with the classifier).
"""

from __future__ import annotations

from typing import Any

import torch
import torchmetrics
from torch import Tensor

from cspnet.detection.data import BoxAugment, Mosaic
from cspnet.detection.loss import YoloLoss
from cspnet.detection.metrics import coco_metrics
from cspnet.models.detectors.model import Detector
from cspnet.ops.postprocess import postprocess_numpy
from cspnet.ops.thresholds import EVALUATE
from cspnet.training.detection_config import DetectionTrainConfig
from cspnet.training.resumable import ResumableModule


def split_targets(targets: Tensor, batch: int) -> list[dict[str, Tensor]]:
    """``(M, 6)`` batch rows -> per image ``{"boxes": (K, 4), "labels": (K,)}`` on the CPU."""
    targets = targets.detach().cpu()
    return [{"boxes": targets[targets[:, 0] == i, 2:6].float(), "labels": targets[targets[:, 0] == i, 1].long()}
            for i in range(batch)]  # fmt: skip


class DetectorModule(ResumableModule):
    """Trains a registered detector on box batches ``(uint8 images, (M, 6) target rows)``.

    Its inputs are pixels in [0, 1] (``mean`` 0, ``std`` 1, recorded like the classifier's).
    """

    TASK = "detection"
    CONFIG = DetectionTrainConfig
    model: Detector

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cfg, model = self.cfg, self.model
        if not isinstance(model, Detector):
            raise ValueError(f"--model {self.hparams['model_name']} is not a detector (see `cspnet models --task detection`)")
        self.loss = YoloLoss(model.get_buffer("anchors"), model.strides, model.num_classes, cfg.box_loss,
                             cfg.ignore_threshold, anchor_threshold=cfg.anchor_threshold)  # fmt: skip
        hflip = cfg.hflip or 0.0
        self.augment = BoxAugment((cfg.scale_min, cfg.scale_max), cfg.translate, hflip, cfg.jitter) if cfg.augment else None
        self.mosaic = Mosaic(cfg.mosaic) if cfg.augment and cfg.mosaic > 0 else None
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
        loss, parts = self.loss(self.model(self.model_input(x)), targets, (x.shape[-2], x.shape[-1]))
        for name, value in parts.items():
            self.log(f"train/{name}_loss", value)
        return self.track_loss(loss)

    # -- validation --------------------------------------------------------------------------
    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        images, targets = batch
        size = (images.shape[-2], images.shape[-1])
        outputs = self.inference_model()(self.model_input(images))
        loss, _ = self.loss(outputs, targets, size)
        self.val_loss.update(loss.detach(), weight=images.shape[0])
        boxes, scores = self.model.decode(outputs)
        self._val_found += postprocess_numpy(boxes, scores, size, self.cfg.eval_conf, self.cfg.eval_iou,
                                             self.cfg.max_detections, max_candidates=EVALUATE.max_candidates)  # fmt: skip
        self._val_truth += split_targets(targets, images.shape[0])

    def on_validation_epoch_end(self) -> None:
        truth, found = self._val_truth, self._val_found
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, (truth, found))
            truth = [t for part in gathered for t in part[0]]
            found = [f for part in gathered for f in part[1]]
        loss = self.val_loss.compute()
        self.check_finite_validation(loss)
        self.coco = {**coco_metrics(truth, found, list(self.hparams["class_names"])), "images": len(truth)}
        for name in ("map", "map50", "map75", "mar100"):
            value = self.coco[name]
            self.log(f"val/{name}", float("nan") if value is None else value, prog_bar=name in ("map", "map50"))
        self.log("val/loss", loss, prog_bar=True)
        self.val_loss.reset()
        self._val_truth, self._val_found = [], []

    # -- checkpoints -------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["cspnet_coco"] = self.coco
        # COCO data: the category id of each class, so that predictions are written with the data's own ids.
        train_set = getattr(getattr(self.trainer, "datamodule", None), "train_set", None)
        category_ids = getattr(train_set, "category_ids", None)
        if category_ids is not None:
            checkpoint["category_ids"] = [int(i) for i in category_ids]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self.coco = dict(checkpoint.get("cspnet_coco", {}))
