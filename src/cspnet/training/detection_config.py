"""The resolved configuration of a detection run (``config.json`` / ``config.yaml`` of ``cspnet detect train``).

The shared fields and their checks are :class:`~cspnet.training.config.RunConfig`'s; this adds the
detection data, the YOLO loss and the box augmentation.

>>> DetectionTrainConfig(box_loss="l1").validate()
Traceback (most recent call last):
...
ValueError: --box-loss l1 is invalid: expected one of 'auto', 'offsets', 'giou', 'ciou'
>>> DetectionTrainConfig().resolved(default_img_size=128).img_size   # the embedded set's canvas
64
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from cspnet.detection.loss import BOX_LOSSES
from cspnet.fields import bounded, one_of
from cspnet.ops.thresholds import EVALUATE
from cspnet.training.config import MAX_IMG_SIZE, OPTIMIZERS, RunConfig

DEFAULT_DETECTOR = "cspdensenet_bc40_efm"  # the small CSPDenseNet-EFM detector for small inputs
DIGITS_DETECTION_IMG_SIZE = 64  # the embedded set's canvas side
FIT_ANCHORS = ("auto", "on", "off")
FREEZE_PARTS = "backbone"  # or a number of stages


@dataclass(frozen=True)
class Recipe:
    """The defaults of the fields a config leaves at ``None`` (or ``"auto"``), for one kind of data.

    The embedded digits keep the recipe measured on them (``docs/detection.md``, "The default:
    measured"); your data (COCO or YOLO files) gets the one chosen by the ablation of
    ``benchmarks/detection_recipe.py`` on real photographs and the digits written as files.
    """

    lr: float  # AdamW (SGD: SGD_LR)
    weight_decay: float  # AdamW (SGD: 5e-4)
    warmup_epochs: float
    box_loss: str
    anchor_threshold: float
    mosaic: float
    mixup: float
    multi_scale: float
    close_mosaic_share: float  # the last share of the epochs without mosaic and mixup (when either is on)
    fit_anchors: bool


DIGITS_RECIPE = Recipe(lr=1e-2, weight_decay=0.05, warmup_epochs=1.0, box_loss="offsets", anchor_threshold=0.25,
                       mosaic=0.0, mixup=0.0, multi_scale=0.0, close_mosaic_share=0.1, fit_anchors=False)  # fmt: skip
USER_RECIPE = Recipe(lr=1e-2, weight_decay=0.05, warmup_epochs=1.0, box_loss="ciou", anchor_threshold=0.25,
                     mosaic=0.0, mixup=0.0, multi_scale=0.0, close_mosaic_share=0.1, fit_anchors=True)  # fmt: skip
DIGITS_BATCH_SIZE = 32
# Your data: a batch that leaves at least AUTO_BATCH_STEPS optimizer steps per epoch. With 40 images a
# batch of 32 gave one step an epoch (the last 8 images are dropped: see Batching), 40 steps in 40 epochs.
AUTO_BATCH_STEPS = 16
AUTO_BATCH_RANGE = (4, 32)
SGD_LR = 0.01
# --pretrained (a whole detector): the learning rate x this. Measured (benchmarks/detection_transfer.py finetune,
# docs/detection.md): a converged digits detector (mAP@.5 0.891) fine-tuned 2 epochs on its own data ended at
# 0.878 at the full rate, 0.826 at a tenth and 0.840 at 3 %: every run dips in its first epoch (a fresh EMA
# follows the raw weights), and the full rate recovers best. So the rate stays; the warm-up is shortened.
FINETUNE_LR_FACTOR = 1.0
FINETUNE_WARMUP_EPOCHS = 0.25  # --pretrained: a short warm-up


@dataclass
class DetectionTrainConfig(RunConfig):
    """Every knob of ``cspnet detect train``; ``None`` fields are resolved from the data and the model."""

    task: ClassVar[str] = "detection"
    command: ClassVar[str] = "cspnet detect train"

    model: str = field(default=DEFAULT_DETECTOR, metadata={"doc": "registered detector (`cspnet models --task detection`)"})
    data: str = field(default="digits", metadata={
        "doc": "'digits' (embedded, default), a COCO instances .json or a YOLO data.yaml"})  # fmt: skip
    images: str | None = field(default=None, metadata={"doc": "COCO: the training image folder (default: beside the JSON)"})
    val_data: str | None = field(default=None, metadata={
        "doc": "COCO: the validation JSON (default: YOLO's val split, else a held-out share)"})  # fmt: skip
    val_images: str | None = field(default=None, metadata={"doc": "COCO: the validation image folder"})
    epochs: int = bounded(13, 1, integer=True)  # the embedded set: under 10 minutes on a 2-core CPU
    # None until the data is read (with_data): RunConfig declares a plain number.
    batch_size: int | None = bounded(None, 1, 1 << 16, integer=True, optional=True,  # type: ignore[assignment]
                                     doc=f"per process (default: {DIGITS_BATCH_SIZE} for digits; for your data the "
                                         f"training images / {AUTO_BATCH_STEPS} per process, between "
                                         f"{AUTO_BATCH_RANGE[0]} and {AUTO_BATCH_RANGE[1]}: at least "
                                         f"{AUTO_BATCH_STEPS} steps an epoch)")  # fmt: skip
    lr: float | None = bounded(None, 0.0, low_open=True, optional=True,
                               doc=f"peak learning rate (default: adamw {DIGITS_RECIPE.lr:g} for digits, else "
                                   f"{USER_RECIPE.lr:g}; sgd {SGD_LR:g}; the same with --pretrained)")  # fmt: skip
    weight_decay: float | None = bounded(None, 0.0, optional=True,
                                         doc=f"default: adamw {DIGITS_RECIPE.weight_decay:g} for digits, else "
                                             f"{USER_RECIPE.weight_decay:g}; sgd 5e-4")  # fmt: skip
    # None until resolved (the recipe of the data, or a fine-tune): RunConfig declares a plain number.
    warmup_epochs: float | None = bounded(None, 0.0, optional=True,  # type: ignore[assignment]
                                          doc=f"linear learning-rate warm-up (default: {DIGITS_RECIPE.warmup_epochs:g} "
                                              f"for digits, else {USER_RECIPE.warmup_epochs:g}; "
                                              f"{FINETUNE_WARMUP_EPOCHS:g} with --pretrained)")  # fmt: skip
    optimizer: str = one_of("adamw", OPTIMIZERS)
    min_lr_ratio: float = bounded(0.05, 0.0, 1.0, doc="the cosine schedule ends at lr x this")
    img_size: int | None = bounded(None, 1, MAX_IMG_SIZE, optional=True, integer=True,
                                   doc="input side, a multiple of the detector's stride; images are letterboxed "
                                       "to it (default: 64 for digits, else the model's)")  # fmt: skip
    output: str = field(default="runs/detect", metadata={"doc": "run folder"})
    pretrained_backbone: str | None = field(default=None, metadata={
        "doc": "start the detector's backbone from classification weights: any file create_model(pretrained=...) "
               "reads for the backbone model (timm / torchvision files, darknet .weights and .conv.N, a "
               "`cspnet train` checkpoint)"})  # fmt: skip
    freeze: str | None = field(default=None, metadata={
        "doc": "keep part of the model fixed, BatchNorm statistics included: 'backbone', or N = the stem and the "
               "backbone's first N stages"})  # fmt: skip
    freeze_epochs: int | None = bounded(None, 1, integer=True, optional=True,
                                        doc="--freeze: for this many first epochs (default: the whole run)")  # fmt: skip
    calibrate_bn: int = bounded(32, 0, integer=True,
                                doc="before each validation, the evaluated weights' BatchNorm statistics are measured "
                                    "again on this many training images (0: off)")  # fmt: skip
    box_loss: str = one_of("auto", ("auto", *BOX_LOSSES),
                           doc=f"YOLOv3 offsets or an IoU loss (auto: {DIGITS_RECIPE.box_loss} for digits, else "
                               f"{USER_RECIPE.box_loss})")  # fmt: skip
    ignore_threshold: float = bounded(0.5, 0.0, 1.0, doc="YOLOv3's objectness ignore IoU")
    anchor_threshold: float | None = bounded(
        None, 0.0, 1.0, optional=True,
        doc=f"also train every anchor whose shape IoU with a box exceeds this (YOLOv4's iou_thresh; 1: YOLOv3's best "
            f"anchor only; default: {DIGITS_RECIPE.anchor_threshold:g} for digits, else {USER_RECIPE.anchor_threshold:g})")  # fmt: skip
    fit_anchors: str = one_of("auto", FIT_ANCHORS,
                              doc=f"fit the anchors to the training boxes (k-means on shape IoU, then a genetic "
                                  f"refinement) and use them when they fit better (mean best IoU +0.02 or more); "
                                  f"auto: {'on' if DIGITS_RECIPE.fit_anchors else 'off'} for digits, else "
                                  f"{'on' if USER_RECIPE.fit_anchors else 'off'}. Anchors given with --set, or "
                                  f"those of a --pretrained detector, are kept")  # fmt: skip
    scale_min: float = bounded(0.7, 0.0, low_open=True, doc="random affine zoom range, low end")
    scale_max: float = bounded(1.3, 0.0, low_open=True, doc="random affine zoom range, high end")
    translate: float = bounded(0.15, 0.0, 0.5, doc="random affine shift, as a fraction of the side")
    mosaic: float | None = bounded(None, 0.0, 1.0, optional=True,
                                   doc=f"probability that a training image becomes a 2x2 mosaic (YOLOv4; default: "
                                       f"{DIGITS_RECIPE.mosaic:g} for digits, else {USER_RECIPE.mosaic:g})")  # fmt: skip
    mixup: float | None = bounded(None, 0.0, 1.0, optional=True,
                                  doc=f"probability that a training image is blended with another, keeping the boxes of "
                                      f"both (default: {DIGITS_RECIPE.mixup:g} for digits, else {USER_RECIPE.mixup:g})")  # fmt: skip
    close_mosaic: int | None = bounded(None, 0, integer=True, optional=True,
                                       doc=f"the last epochs train without mosaic and mixup (default: "
                                           f"{USER_RECIPE.close_mosaic_share:g} of --epochs rounded up, when either is on)")  # fmt: skip
    multi_scale: float | None = bounded(None, 0.0, 1.0, high_open=True, optional=True,
                                        doc=f"each step's input side drawn from the stride multiples within +- this share "
                                            f"of --img-size (default: {DIGITS_RECIPE.multi_scale:g} for digits, else "
                                            f"{USER_RECIPE.multi_scale:g})")  # fmt: skip
    augment: bool = field(default=True, metadata={"doc": "random affine, flip and colour jitter with the boxes"})
    # Evaluation: COCO scores every detection, so the threshold is low (as COCO evaluations use).
    eval_conf: float = bounded(EVALUATE.conf_threshold, 0.0, 1.0, doc="validation score threshold")
    eval_iou: float = bounded(EVALUATE.iou_threshold, 0.0, 1.0, doc="validation NMS IoU threshold")
    max_detections: int = bounded(EVALUATE.max_detections, 1, integer=True, doc="detections per validation image")

    def validate(self) -> None:
        super().validate()
        if self.scale_min > self.scale_max:
            raise ValueError(f"--scale-min {self.scale_min} is invalid: larger than --scale-max {self.scale_max}")
        if self.pretrained_backbone is not None and not Path(self.pretrained_backbone).is_file():
            raise FileNotFoundError(f"--pretrained-backbone {self.pretrained_backbone}: file not found")
        if self.pretrained_backbone is not None and self.pretrained is not None:
            raise ValueError(f"--pretrained-backbone {self.pretrained_backbone} and --pretrained {self.pretrained} "
                             "together: the whole detector's weights would replace the backbone's; give one")  # fmt: skip
        frozen_stages(self.freeze)  # the one-line error of a bad --freeze
        if self.freeze_epochs is not None and self.freeze is None:
            raise ValueError(f"--freeze-epochs {self.freeze_epochs} is invalid without --freeze")

    @property
    def recipe(self) -> Recipe:
        """The defaults of this run's kind of data (:data:`DIGITS_RECIPE` or :data:`USER_RECIPE`)."""
        return DIGITS_RECIPE if self.is_digits else USER_RECIPE

    def resolved(self, default_img_size: int) -> DetectionTrainConfig:
        config = super().resolved(default_img_size)
        if self.weight_decay is None and self.optimizer == "adamw":  # RunConfig's default is the classifiers'
            config.weight_decay = self.recipe.weight_decay
        return config

    def with_data(self, num_train: int, world_size: int) -> DetectionTrainConfig:
        """``batch_size`` filled in (32 for the digits; for other data :func:`auto_batch_size`)."""
        if self.batch_size is not None:
            return self
        batch = DIGITS_BATCH_SIZE if self.is_digits else auto_batch_size(num_train, world_size)
        return dataclasses.replace(self, batch_size=batch)

    def _task_defaults(self, default_img_size: int) -> dict[str, Any]:
        recipe, sgd, finetune = self.recipe, self.optimizer == "sgd", self.pretrained is not None
        lr = self.lr if self.lr is not None else (SGD_LR if sgd else recipe.lr) * (FINETUNE_LR_FACTOR if finetune else 1)
        mosaic = self.mosaic if self.mosaic is not None else recipe.mosaic
        mixup = self.mixup if self.mixup is not None else recipe.mixup
        close = math.ceil(recipe.close_mosaic_share * self.epochs) if mosaic > 0 or mixup > 0 else 0
        return {
            "lr": lr,
            "warmup_epochs": _given(self.warmup_epochs, FINETUNE_WARMUP_EPOCHS if finetune else recipe.warmup_epochs),
            "img_size": self.img_size or (DIGITS_DETECTION_IMG_SIZE if self.is_digits else default_img_size),
            "box_loss": recipe.box_loss if self.box_loss == "auto" else self.box_loss,
            "anchor_threshold": _given(self.anchor_threshold, recipe.anchor_threshold),
            "mosaic": mosaic,
            "mixup": mixup,
            "close_mosaic": _given(self.close_mosaic, close),
            "multi_scale": _given(self.multi_scale, recipe.multi_scale),
            "fit_anchors": ("on" if recipe.fit_anchors else "off") if self.fit_anchors == "auto" else self.fit_anchors,
        }


def auto_batch_size(num_train: int, world_size: int = 1) -> int:
    """The default batch of a run on your data: each process's share of the ``num_train`` training images
    divided by :data:`AUTO_BATCH_STEPS`, kept within :data:`AUTO_BATCH_RANGE` (and the share).

    >>> auto_batch_size(40), auto_batch_size(200), auto_batch_size(5000), auto_batch_size(10)
    (4, 12, 32, 4)
    """
    share = max(1, -(-num_train // world_size))
    low, high = AUTO_BATCH_RANGE
    return min(share, max(low, min(high, share // AUTO_BATCH_STEPS)))


def _given(value: Any, default: Any) -> Any:
    return default if value is None else value


def frozen_stages(freeze: str | None) -> int | None:
    """``--freeze``'s stages: ``None`` (nothing frozen), -1 (the whole backbone) or N >= 0 (the stem and N stages).

    >>> frozen_stages("backbone"), frozen_stages("2"), frozen_stages(None)
    (-1, 2, None)
    >>> frozen_stages("head")
    Traceback (most recent call last):
    ...
    ValueError: --freeze head is invalid: expected 'backbone' or a number of stages N >= 0
    """
    if freeze is None:
        return None
    if freeze.strip().lower() == FREEZE_PARTS:
        return -1
    if freeze.strip().isdigit():
        return int(freeze)
    raise ValueError(f"--freeze {freeze} is invalid: expected 'backbone' or a number of stages N >= 0")
