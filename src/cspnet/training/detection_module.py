"""The detector's LightningModule: box augmentation, YOLOv3's loss and COCO metrics on
:class:`~cspnet.training.resumable.ResumableModule` (the model, optimizer, schedule, EMA, per-step
seeds and the checkpoint state of exact resume, shared with the classifier).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torchmetrics
from torch import Tensor, nn

from cspnet.detection.data import BoxAugment, Mosaic
from cspnet.detection.data.mixup import DetectionMixup, MultiScale
from cspnet.detection.loss import YoloLoss
from cspnet.detection.metrics import coco_metrics
from cspnet.models.detectors.model import Detector
from cspnet.ops.postprocess import postprocess_numpy
from cspnet.ops.thresholds import EVALUATE
from cspnet.training.detection_config import DetectionTrainConfig
from cspnet.training.resumable import ResumableModule

log = logging.getLogger(__name__)


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
        on = cfg.augment
        self.augment = BoxAugment((cfg.scale_min, cfg.scale_max), cfg.translate, hflip, cfg.jitter) if on else None
        self.mosaic = Mosaic(cfg.mosaic) if on and cfg.mosaic else None
        self.mixup = DetectionMixup(cfg.mixup) if on and cfg.mixup else None
        self.multi_scale = MultiScale(cfg.multi_scale, model.max_stride) if on and cfg.multi_scale else None
        self.val_loss = torchmetrics.MeanMetric()
        self._val_truth: list[dict[str, Tensor]] = []
        self._val_found: list[dict[str, Tensor]] = []
        self.coco: dict[str, Any] = {}  # the last validation's full COCO metrics (per-class AP included)

    def backbone(self) -> tuple[nn.Module, str, dict[str, Any]]:
        """The detector's feature extractor, built from the registered classifier its config names."""
        config = self.model.config
        return self.model.backbone, config.backbone, dict(config.backbone_overrides)

    # -- anchors -----------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        """Before a new run trains: the anchors fitted to the training boxes, when ``--fit-anchors`` asks
        for it (a resumed run takes those of its checkpoint: :meth:`on_load_checkpoint`)."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        given = "anchors" in self.hparams["model_overrides"]
        if stage == "fit" and datamodule is not None and not given and not self.cfg.resume:
            self.fit_anchors(datamodule.train_set)

    def fit_anchors(self, train_set: Any) -> None:
        """Fit anchors to ``train_set``'s boxes and use them when they fit better than the model's
        (:meth:`cspnet.detection.anchors.AnchorFit.better`), as ``--fit-anchors`` says; either way the
        quality of the anchors trained with is reported."""
        from cspnet.detection.anchors import fit_anchors, training_box_sizes

        if self.cfg.fit_anchors == "off":
            return
        anchors = self.model.get_buffer("anchors")
        stock = tuple((float(w), float(h)) for w, h in anchors.reshape(-1, 2).tolist())
        fit = fit_anchors(training_box_sizes(train_set), stock, seed=self.cfg.seed)
        if fit.after == fit.before:
            log.info("the model's anchors fit the %d training boxes (%s); fitted ones were no better", fit.boxes,
                     fit.before)  # fmt: skip
            return
        log.warning("anchors fitted to the %d training boxes: %s -> %s; anchors (w, h) %s", fit.boxes, fit.before,
                    fit.after, ", ".join(f"{w:g}x{h:g}" for w, h in fit.anchors))  # fmt: skip
        self.set_anchors(fit.grid(len(self.model.strides)))

    def set_anchors(self, grid: Tensor | Any) -> None:
        """Use ``grid`` (``(scales, A, 2)``, or ``((w, h), ...)``) as the anchors of the model, its EMA and
        the loss; recorded in the ``model_overrides`` of every checkpoint, so that resumed runs, ``val``,
        ``predict`` and exported files build the model with them."""
        grid = torch.as_tensor(grid, dtype=torch.float32).reshape(self.model.get_buffer("anchors").shape)
        for module in (self.model, self.loss, *([self.ema.module] if self.ema is not None else [])):
            module.get_buffer("anchors").copy_(grid)
        pairs = tuple(tuple(pair) for pair in grid.reshape(-1, 2).tolist())
        self.hparams["model_overrides"] = {**self.hparams["model_overrides"], "anchors": pairs}

    def load_pretrained(self, path: str) -> None:
        """As :meth:`ResumableModule.load_pretrained`; a ``detect train`` checkpoint's anchors come with its
        weights (its head learnt them), unless this run's anchors were given."""
        super().load_pretrained(path)
        anchors = _checkpoint_anchors(path)
        if anchors is not None and "anchors" not in self.hparams["model_overrides"]:
            self.set_anchors(anchors)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self.coco = dict(checkpoint.get("cspnet_coco", {}))
        anchors = (checkpoint.get("model_overrides") or {}).get("anchors")
        if anchors is not None and "anchors" not in self.hparams["model_overrides"]:
            self.set_anchors(anchors)  # fitted when the run started

    # -- training ----------------------------------------------------------------------------
    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, targets = batch
        x, targets = self.augmented(images.float() / 255.0, targets)
        loss, parts = self.loss(self.model(self.model_input(x)), targets, (x.shape[-2], x.shape[-1]))
        for name, value in parts.items():
            self.log(f"train/{name}_loss", value)
        return self.track_loss(loss)

    def augmented(self, x: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """A training batch (pixels in [0, 1]) through the recipe: mosaic, mixup (both off in the last
        ``--close-mosaic`` epochs), the random affine with flip and colour, then the multi-scale side."""
        mixing = self.current_epoch < self.cfg.epochs - (self.cfg.close_mosaic or 0)
        if self.mosaic is not None and mixing:  # before the affine: the mosaic is then zoomed and shifted as one image
            x, targets = self.mosaic(x, targets)
        if self.mixup is not None and mixing:
            x, targets = self.mixup(x, targets)
        if self.augment is not None:
            x, targets = self.augment(x, targets)
        if self.multi_scale is not None:
            x, targets = self.multi_scale(x, targets)
        return x, targets

    def calibration_batches(self, count: int) -> list[Tensor]:
        """``count`` training images chosen once by the run's seed, letterboxed, not augmented, in batches."""
        train_set = self.trainer.datamodule.train_set  # type: ignore[attr-defined]
        count = min(count, len(train_set))
        order = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(self.cfg.seed))[:count]
        images = torch.stack([train_set[int(i)][0] for i in order]).to(self.device)
        size = max(1, min(self.cfg.batch_size, count))
        return [self.model_input(images[i : i + size].float() / 255.0) for i in range(0, count, size)]

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


def _checkpoint_anchors(path: str) -> Any:
    """The anchors a ``detect train`` checkpoint was trained with (``None``: none recorded, or not such a file)."""
    from cspnet.convert import CheckpointError, load_torch_file

    if not path.lower().endswith((".ckpt", ".pt", ".pth")):
        return None
    try:
        ckpt = load_torch_file(path)
    except CheckpointError:
        return None
    overrides = ckpt.get("model_overrides") if isinstance(ckpt, dict) and ckpt.get("task") == "detection" else None
    return overrides.get("anchors") if isinstance(overrides, dict) else None
