"""The resolved configuration of a detection run (``config.json`` / ``config.yaml`` of ``cspnet detect train``).

The shared fields and their checks are :class:`~cspnet.training.config.RunConfig`'s; this adds the
detection data, the YOLO loss and the box augmentation.

>>> DetectionTrainConfig(box_loss="l1").validate()
Traceback (most recent call last):
...
ValueError: --box-loss l1 is invalid: expected one of 'offsets', 'giou', 'ciou'
>>> DetectionTrainConfig().resolved(default_img_size=128).img_size   # the embedded set's canvas
64
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from cspnet.detection.loss import BOX_LOSSES
from cspnet.fields import bounded, one_of
from cspnet.ops.thresholds import EVALUATE
from cspnet.training.config import MAX_IMG_SIZE, OPTIMIZERS, RunConfig

DEFAULT_DETECTOR = "cspdensenet_bc40_efm"  # the small CSPDenseNet-EFM detector for small inputs
DIGITS_DETECTION_IMG_SIZE = 64  # the embedded set's canvas side


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
    batch_size: int = bounded(32, 1, 1 << 16, integer=True, doc="per process")
    lr: float | None = bounded(None, 0.0, low_open=True, optional=True,
                               doc="peak learning rate (default: adamw 1e-2 for digits, else 2e-3; sgd 0.01)")  # fmt: skip
    optimizer: str = one_of("adamw", OPTIMIZERS)
    min_lr_ratio: float = bounded(0.05, 0.0, 1.0, doc="the cosine schedule ends at lr x this")
    img_size: int | None = bounded(None, 1, MAX_IMG_SIZE, optional=True, integer=True,
                                   doc="input side, a multiple of the detector's stride; images are letterboxed "
                                       "to it (default: 64 for digits, else the model's)")  # fmt: skip
    output: str = field(default="runs/detect", metadata={"doc": "run folder"})
    box_loss: str = one_of("offsets", BOX_LOSSES, doc="YOLOv3 offsets or an IoU loss")
    ignore_threshold: float = bounded(0.5, 0.0, 1.0, doc="YOLOv3's objectness ignore IoU")
    # YOLOv4's iou_thresh: also train every anchor whose shape IoU with a box exceeds this; 1: YOLOv3's
    # best anchor only. Default: 0.25 for digits (learns ~2x faster in a short run), else 1.
    anchor_threshold: float | None = bounded(
        None, 0.0, 1.0, optional=True,
        doc="also train every anchor whose shape IoU with a box exceeds this (YOLOv4's iou_thresh; default: 0.25 for "
            "digits, else 1 = YOLOv3's best anchor only)")  # fmt: skip
    scale_min: float = bounded(0.7, 0.0, low_open=True, doc="random affine zoom range, low end")
    scale_max: float = bounded(1.3, 0.0, low_open=True, doc="random affine zoom range, high end")
    translate: float = bounded(0.15, 0.0, 0.5, doc="random affine shift, as a fraction of the side")
    mosaic: float = bounded(0.0, 0.0, 1.0, doc="probability that a training image becomes a 2x2 mosaic (YOLOv4; 0: off)")
    augment: bool = field(default=True, metadata={"doc": "random affine, flip and colour jitter with the boxes"})
    # Evaluation: COCO scores every detection, so the threshold is low (as COCO evaluations use).
    eval_conf: float = bounded(EVALUATE.conf_threshold, 0.0, 1.0, doc="validation score threshold")
    eval_iou: float = bounded(EVALUATE.iou_threshold, 0.0, 1.0, doc="validation NMS IoU threshold")
    max_detections: int = bounded(EVALUATE.max_detections, 1, integer=True, doc="detections per validation image")

    def validate(self) -> None:
        super().validate()
        if self.scale_min > self.scale_max:
            raise ValueError(f"--scale-min {self.scale_min} is invalid: larger than --scale-max {self.scale_max}")

    def _task_defaults(self, default_img_size: int) -> dict[str, Any]:
        digits, sgd = self.is_digits, self.optimizer == "sgd"
        return {
            "lr": self.lr if self.lr is not None else (0.01 if sgd else (1e-2 if digits else 2e-3)),
            "img_size": self.img_size or (DIGITS_DETECTION_IMG_SIZE if digits else default_img_size),
            "anchor_threshold": self.anchor_threshold if self.anchor_threshold is not None else (0.25 if digits else 1.0),
        }
