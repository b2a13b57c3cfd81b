"""The resolved configuration of a detection run (``config.json`` / ``config.yaml`` of ``cspnet detect train``).

Constraints are declared on the fields (:mod:`cspnet.fields`) like the classifier's
:class:`~cspnet.training.TrainConfig`, so a bad value is a one-line error naming the flag.

>>> DetectionTrainConfig(box_loss="l1").validate()
Traceback (most recent call last):
...
ValueError: --box-loss l1 is invalid: expected one of 'offsets', 'giou', 'ciou'
>>> DetectionTrainConfig().resolved(default_img_size=128).img_size   # the embedded set's canvas
64
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cspnet.detection.loss import BOX_LOSSES
from cspnet.fields import bounded, check_fields, one_of
from cspnet.ops.thresholds import EVALUATE
from cspnet.precision import TRAINING_PRECISIONS, canonical
from cspnet.training.config import (
    ACCELERATORS,
    MAX_IMG_SIZE,
    OPTIMIZERS,
    RESUME_MAY_CHANGE,
    _flag,
)

DEFAULT_DETECTOR = "cspdensenet_bc40_efm"  # the small CSPDenseNet-EFM detector for small inputs
DIGITS_DETECTION_IMG_SIZE = 64  # the embedded set's canvas side
DETECTION_RESUME_MAY_CHANGE = RESUME_MAY_CHANGE


@dataclass
class DetectionTrainConfig:
    """Every knob of ``cspnet detect train``; ``None`` fields are resolved from the data and the model."""

    model: str = DEFAULT_DETECTOR
    model_overrides: dict[str, Any] = field(default_factory=dict)
    data: str = "digits"  # 'digits', a COCO instances .json or a YOLO data.yaml
    images: str | None = None  # COCO: the image folder (default: beside the JSON)
    val_data: str | None = None  # COCO: the validation JSON (YOLO: data.yaml's val split)
    val_images: str | None = None
    val_fraction: float = bounded(0.2, 0.0, 1.0, low_open=True, high_open=True)  # held out when no val split
    epochs: int = bounded(13, 1, integer=True)  # the embedded set: under 10 minutes on a 2-core CPU
    batch_size: int = bounded(32, 1, integer=True)
    lr: float | None = bounded(None, 0.0, low_open=True, optional=True)  # adamw: 1e-2 digits, else 2e-3; sgd: 0.01
    weight_decay: float | None = bounded(None, 0.0, optional=True)  # adamw: 0.05, sgd: 5e-4
    momentum: float = bounded(0.9, 0.0, 1.0, high_open=True)
    optimizer: str = one_of("adamw", OPTIMIZERS)
    warmup_epochs: float = bounded(1.0, 0.0)
    min_lr_ratio: float = bounded(0.05, 0.0, 1.0)
    img_size: int | None = bounded(None, 1, MAX_IMG_SIZE, optional=True, integer=True)  # digits: 64, else the model's
    precision: str = one_of("fp32", TRAINING_PRECISIONS)  # aliases: Lightning's names (see __post_init__)
    accelerator: str = one_of("auto", ACCELERATORS)
    devices: int | None = bounded(None, 1, integer=True, optional=True)
    num_nodes: int | None = bounded(None, 1, integer=True, optional=True)
    output: str = "runs/detect"
    resume: bool = False
    pretrained: str | None = None
    ema: bool = True
    ema_decay: float = bounded(0.998, 0.0, 1.0, low_open=True, high_open=True)
    seed: int = bounded(0, 0, integer=True)
    box_loss: str = one_of("offsets", BOX_LOSSES)
    ignore_threshold: float = bounded(0.5, 0.0, 1.0)
    # YOLOv4's iou_thresh: also train every anchor whose shape IoU with a box exceeds this; 1: YOLOv3's
    # best anchor only. Default: 0.25 for digits (learns ~2x faster in a short run), else 1.
    anchor_threshold: float | None = bounded(None, 0.0, 1.0, optional=True)
    hflip: float | None = bounded(None, 0.0, 1.0, optional=True)  # digits: 0 (a mirrored digit is no digit), else 0.5
    scale_min: float = bounded(0.7, 0.0, low_open=True)  # random affine zoom range
    scale_max: float = bounded(1.3, 0.0, low_open=True)
    translate: float = bounded(0.15, 0.0, 0.5)
    jitter: float = bounded(0.2, 0.0, 1.0)
    mosaic: float = bounded(0.0, 0.0, 1.0)  # probability that a training image becomes a 2x2 mosaic (0: off)
    augment: bool = True
    workers: int | None = bounded(None, 0, integer=True, optional=True)  # digits: 0 (in memory), else min(4, cpus)
    checkpoint_every: int = bounded(50, 0, integer=True)
    limit_train_batches: int | None = bounded(None, 1, integer=True, optional=True)
    # Evaluation: COCO scores every detection, so the threshold is low (as COCO evaluations use).
    eval_conf: float = bounded(EVALUATE.conf_threshold, 0.0, 1.0)
    eval_iou: float = bounded(EVALUATE.iou_threshold, 0.0, 1.0)
    max_detections: int = bounded(EVALUATE.max_detections, 1, integer=True)

    def __post_init__(self) -> None:
        self.precision = canonical(self.precision)  # Lightning's names -> the short ones

    def validate(self) -> None:
        """Raise ``ValueError`` with a one-line message for an impossible setting."""
        check_fields(self, label=_flag)
        if self.scale_min > self.scale_max:
            raise ValueError(f"--scale-min {self.scale_min} is invalid: larger than --scale-max {self.scale_max}")
        if self.accelerator in ("gpu", "cuda"):
            import torch

            if not torch.cuda.is_available():
                raise ValueError(f"--accelerator {self.accelerator} is invalid: no CUDA GPU is visible here")
        if self.pretrained is not None and not Path(self.pretrained).is_file():
            raise FileNotFoundError(f"--pretrained {self.pretrained}: file not found")
        if not self.is_digits and not Path(self.data).exists():
            raise FileNotFoundError(f"--data {self.data}: file not found")

    @property
    def is_digits(self) -> bool:
        return self.data == "digits"

    def resolved(self, default_img_size: int) -> DetectionTrainConfig:
        """A copy with every ``None`` default filled in (what the run really uses)."""
        digits, sgd = self.is_digits, self.optimizer == "sgd"
        return dataclasses.replace(
            self,
            lr=self.lr if self.lr is not None else (0.01 if sgd else (1e-2 if digits else 2e-3)),
            weight_decay=self.weight_decay if self.weight_decay is not None else (5e-4 if sgd else 0.05),
            img_size=self.img_size or (DIGITS_DETECTION_IMG_SIZE if digits else default_img_size),
            hflip=self.hflip if self.hflip is not None else (0.0 if digits else 0.5),
            anchor_threshold=self.anchor_threshold if self.anchor_threshold is not None else (0.25 if digits else 1.0),
            workers=self.workers if self.workers is not None else (0 if digits else _default_workers()),
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DetectionTrainConfig:
        """The config of a ``config.json`` (unknown keys are ignored)."""
        known = {f.name for f in dataclasses.fields(cls)}
        config = cls(**{k: v for k, v in values.items() if k in known})
        config.model_overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in config.model_overrides.items()}
        return config

    def write(self, folder: Path) -> None:
        """``config.json`` and ``config.yaml``, atomically."""
        from cspnet.training.files import atomic_write_bytes

        values = self.to_dict()
        atomic_write_bytes(folder / "config.json", (json.dumps(values, indent=2) + "\n").encode())
        lines = [f"{k}: {json.dumps(v)}" for k, v in values.items()]
        atomic_write_bytes(folder / "config.yaml", ("\n".join(lines) + "\n").encode())


def _default_workers() -> int:
    import os

    return min(4, os.cpu_count() or 1)
