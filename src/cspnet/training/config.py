"""The resolved configuration of a training run (what ``config.json`` / ``config.yaml`` record)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PRECISIONS = ("32", "32-true", "bf16-mixed", "16-mixed", "64")
OPTIMIZERS = ("sgd", "adamw")
# CSPDenseNet-BC-40: 1,438 8x8 digits do not need DenseNet-BC-100's depth, which trains ~3x slower on a CPU.
DEFAULT_MODEL = "cspdensenet_bc40"
DIGITS_IMG_SIZE = 16  # the digits are 8x8; 16 keeps DenseNet-BC's two poolings meaningful and fast on CPU


@dataclass
class TrainConfig:
    """Every knob of ``cspnet train``; ``None`` fields are resolved from the data and the model."""

    model: str = DEFAULT_MODEL
    model_overrides: dict[str, Any] = field(default_factory=dict)
    data: str = "digits"
    val_fraction: float = 0.2
    epochs: int = 15
    batch_size: int = 64
    lr: float | None = None  # sgd: 0.1, adamw: 2e-3 (for batch 64; scaled linearly with the global batch)
    weight_decay: float | None = None  # sgd: 5e-4, adamw: 0.05
    momentum: float = 0.9
    optimizer: str = "sgd"
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.01
    img_size: int | None = None  # digits: 16, folders: the model's registered input size
    precision: str = "32"
    accelerator: str = "auto"
    devices: int | None = None  # None: 1, or the torchrun local world size
    num_nodes: int | None = None
    output: str = "runs/train"
    resume: bool = False
    ema: bool = True
    ema_decay: float = 0.998
    channels_last: bool = False
    grad_checkpointing: bool = False
    seed: int = 0
    mixup: float = 0.0
    cutmix: float = 0.0
    label_smoothing: float = 0.1
    hflip: float | None = None  # digits: 0 (a mirrored digit is not a digit), folders: 0.5
    crop_scale: float | None = None  # smallest random-resized-crop area; digits: 0.6, folders: 0.35
    jitter: float = 0.2
    workers: int | None = None  # digits: 0 (in memory), folders: min(4, cpu count)
    checkpoint_every: int = 50  # optimizer steps between mid-epoch `last.ckpt` saves (0: epoch ends only)
    limit_train_batches: int | None = None  # debugging: batches per epoch

    def validate(self) -> None:
        """Raise ``ValueError`` with a one-line message for an impossible setting."""
        from cspnet.models.registry import list_models, require_classifier

        if self.model in list_models():  # unknown names fail where the model is built
            require_classifier(self.model, "cspnet train")
        positive = {"epochs": self.epochs, "batch_size": self.batch_size}
        for name, value in positive.items():
            if value < 1:
                raise ValueError(f"--{name.replace('_', '-')} {value} is invalid: expected a positive integer")
        if self.img_size is not None and self.img_size < 1:
            raise ValueError(f"--img-size {self.img_size} is invalid: expected a positive integer")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"--lr {self.lr} is invalid: expected a positive number")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"--optimizer {self.optimizer!r} is invalid: expected one of {', '.join(OPTIMIZERS)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"--precision {self.precision!r} is invalid: expected one of {', '.join(PRECISIONS)}")
        for name in ("mixup", "cutmix", "warmup_epochs", "checkpoint_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} {getattr(self, name)} is invalid: expected >= 0")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"--label-smoothing {self.label_smoothing} is invalid: expected 0 <= value < 1")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"--val-fraction {self.val_fraction} is invalid: expected 0 < value < 1")
        if not 0 < self.ema_decay < 1:
            raise ValueError(f"--ema-decay {self.ema_decay} is invalid: expected 0 < value < 1")

    @property
    def is_digits(self) -> bool:
        return self.data == "digits"

    def resolved(self, default_img_size: int) -> TrainConfig:
        """A copy with every ``None`` default filled in (what the run really uses)."""
        digits = self.is_digits
        return dataclasses.replace(
            self,
            lr=self.lr if self.lr is not None else (0.1 if self.optimizer == "sgd" else 2e-3),
            weight_decay=self.weight_decay
            if self.weight_decay is not None
            else (5e-4 if self.optimizer == "sgd" else 0.05),
            img_size=self.img_size or (DIGITS_IMG_SIZE if digits else default_img_size),
            hflip=self.hflip if self.hflip is not None else (0.0 if digits else 0.5),
            crop_scale=self.crop_scale if self.crop_scale is not None else (0.6 if digits else 0.35),
            workers=self.workers if self.workers is not None else (0 if digits else _default_workers()),
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    def write(self, folder: Path) -> None:
        """``config.json`` and ``config.yaml`` (YAML written by hand: no extra dependency)."""
        values = self.to_dict()
        (folder / "config.json").write_text(json.dumps(values, indent=2) + "\n")
        lines = [f"{k}: {json.dumps(v)}" for k, v in values.items()]  # JSON scalars are valid YAML
        (folder / "config.yaml").write_text("\n".join(lines) + "\n")


def _default_workers() -> int:
    import os

    return min(4, os.cpu_count() or 1)
