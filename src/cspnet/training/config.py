"""The resolved configuration of a training run (what ``config.json`` / ``config.yaml`` record).

Every constraint is declared on its field (:mod:`cspnet.fields`) and checked by
:meth:`TrainConfig.validate` before anything is built, so a bad value is a one-line error naming
the command-line flag: ``--lr inf is invalid: expected a finite number``.

>>> TrainConfig(hflip=5).validate()
Traceback (most recent call last):
...
ValueError: --hflip 5 is invalid: expected 0.0 <= hflip <= 1.0
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cspnet.fields import bounded, check_fields, one_of
from cspnet.metadata import MAX_IMG_SIZE  # the one bound on input sides (L0)
from cspnet.precision import TRAINING_PRECISION_CHOICES as PRECISIONS  # noqa: F401  (the --precision choices)
from cspnet.precision import TRAINING_PRECISIONS, canonical

OPTIMIZERS = ("sgd", "adamw")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")
# CSPDenseNet-BC-40: 1,438 8x8 digits do not need DenseNet-BC-100's depth, which trains ~3x slower on a CPU.
DEFAULT_MODEL = "cspdensenet_bc40"
DIGITS_IMG_SIZE = 16  # the digits are 8x8; 16 keeps DenseNet-BC's two poolings meaningful and fast on CPU
# What may differ between a run and its resumption: nothing that changes the result, except the
# number of epochs (extending a finished run; the cosine schedule is stretched to the new end).
RESUME_MAY_CHANGE = ("epochs", "output", "resume", "workers", "checkpoint_every")


@dataclass
class TrainConfig:
    """Every knob of ``cspnet train``; ``None`` fields are resolved from the data and the model."""

    model: str = DEFAULT_MODEL
    model_overrides: dict[str, Any] = field(default_factory=dict)
    data: str = "digits"
    val_fraction: float = bounded(0.2, 0.0, 1.0, low_open=True, high_open=True)
    epochs: int = bounded(15, 1, integer=True)
    batch_size: int = bounded(64, 1, integer=True)
    # sgd: 0.1, adamw: 2e-3 (for batch 64)
    lr: float | None = bounded(None, 0.0, low_open=True, optional=True)
    weight_decay: float | None = bounded(None, 0.0, optional=True)  # sgd: 5e-4, adamw: 0.05
    momentum: float = bounded(0.9, 0.0, 1.0, high_open=True)
    optimizer: str = one_of("sgd", OPTIMIZERS)
    warmup_epochs: float = bounded(1.0, 0.0)
    min_lr_ratio: float = bounded(0.01, 0.0, 1.0)
    img_size: int | None = bounded(None, 1, MAX_IMG_SIZE, optional=True, integer=True)  # digits: 16, else the model's
    crop_pct: float | None = bounded(None, 0.0, 1.0, low_open=True, optional=True)  # digits: 1.0, folders: 0.875
    precision: str = one_of("fp32", TRAINING_PRECISIONS)  # aliases: Lightning's names (see __post_init__)
    accelerator: str = one_of("auto", ACCELERATORS)
    devices: int | None = bounded(None, 1, integer=True, optional=True)  # None: 1, or torchrun's local world
    num_nodes: int | None = bounded(None, 1, integer=True, optional=True)
    output: str = "runs/train"
    resume: bool = False
    pretrained: str | None = None  # fine-tuning: any file create_model(pretrained=...) takes
    ema: bool = True
    ema_decay: float = bounded(0.998, 0.0, 1.0, low_open=True, high_open=True)
    channels_last: bool = False
    grad_checkpointing: bool = False
    seed: int = bounded(0, 0, integer=True)
    mixup: float = bounded(0.0, 0.0)
    cutmix: float = bounded(0.0, 0.0)
    label_smoothing: float = bounded(0.1, 0.0, 1.0, high_open=True)
    hflip: float | None = bounded(None, 0.0, 1.0, optional=True)  # digits: 0 (a mirrored digit is no digit), else 0.5
    # smallest random-resized-crop area; digits: 0.6, folders: 0.35
    crop_scale: float | None = bounded(None, 0.0, 1.0, low_open=True, optional=True)
    jitter: float = bounded(0.2, 0.0, 1.0)
    workers: int | None = bounded(None, 0, integer=True, optional=True)  # digits: 0 (in memory), else min(4, cpus)
    checkpoint_every: int = bounded(50, 0, integer=True)  # steps between mid-epoch saves (0: epoch ends only)
    limit_train_batches: int | None = bounded(None, 1, integer=True, optional=True)  # debugging: batches per epoch

    def __post_init__(self) -> None:
        self.precision = canonical(self.precision)  # "bf16-mixed" -> "bf16": one name per precision

    def validate(self) -> None:
        """Raise ``ValueError`` with a one-line message for an impossible setting."""
        check_fields(self, label=_flag)
        from cspnet.models.registry import list_models, require_classifier

        if self.model in list_models():  # unknown names fail where the model is built, with suggestions
            require_classifier(self.model, "cspnet train")
        if self.accelerator in ("gpu", "cuda"):
            import torch

            if not torch.cuda.is_available():
                raise ValueError(f"--accelerator {self.accelerator} is invalid: no CUDA GPU is visible here "
                                 "(use --accelerator cpu or auto)")  # fmt: skip
        if self.pretrained is not None and not Path(self.pretrained).is_file():
            raise FileNotFoundError(f"--pretrained {self.pretrained}: file not found")

    @property
    def is_digits(self) -> bool:
        return self.data == "digits"

    @property
    def side(self) -> int:
        """The input side of a :meth:`resolved` config."""
        if self.img_size is None:
            raise RuntimeError("img_size is filled in by TrainConfig.resolved()")
        return self.img_size

    def resolved(self, default_img_size: int) -> TrainConfig:
        """A copy with every ``None`` default filled in (what the run really uses)."""
        from cspnet.data.transforms import (  # evaluation resize (timm's crop_pct) of folders
            DEFAULT_CROP_PCT,
            DIGITS_CROP_PCT,
        )

        digits = self.is_digits
        return dataclasses.replace(
            self,
            lr=self.lr if self.lr is not None else (0.1 if self.optimizer == "sgd" else 2e-3),
            weight_decay=self.weight_decay
            if self.weight_decay is not None
            else (5e-4 if self.optimizer == "sgd" else 0.05),
            img_size=self.img_size or (DIGITS_IMG_SIZE if digits else default_img_size),
            crop_pct=self.crop_pct if self.crop_pct is not None else (DIGITS_CROP_PCT if digits else DEFAULT_CROP_PCT),
            hflip=self.hflip if self.hflip is not None else (0.0 if digits else 0.5),
            crop_scale=self.crop_scale if self.crop_scale is not None else (0.6 if digits else 0.35),
            workers=self.workers if self.workers is not None else (0 if digits else _default_workers()),
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """The config of a ``config.json`` (unknown keys, from newer versions, are ignored)."""
        known = {f.name for f in dataclasses.fields(cls)}
        config = cls(**{k: v for k, v in values.items() if k in known})
        if isinstance(config.model_overrides, dict):  # JSON has lists where configs hold tuples
            config.model_overrides = {k: tuple(v) if isinstance(v, list) else v
                                      for k, v in config.model_overrides.items()}  # fmt: skip
        return config

    def write(self, folder: Path) -> None:
        """``config.json`` and ``config.yaml`` (YAML written by hand: no extra dependency), atomically."""
        from cspnet.training.files import atomic_write_bytes

        values = self.to_dict()
        atomic_write_bytes(folder / "config.json", (json.dumps(values, indent=2) + "\n").encode())
        lines = [f"{k}: {json.dumps(v)}" for k, v in values.items()]  # JSON scalars are valid YAML
        atomic_write_bytes(folder / "config.yaml", ("\n".join(lines) + "\n").encode())


def _flag(name: str, value: Any) -> str:
    """How the command line spells a field: ``--batch-size 0``."""
    return f"--{name.replace('_', '-')} {value}"


def _default_workers() -> int:
    import os

    return min(4, os.cpu_count() or 1)
