"""The resolved configuration of a training run (what ``config.json`` / ``config.yaml`` record), for every task.

:class:`RunConfig` holds what every task's run shares (schedule, optimizer, precision, processes,
checkpoints, EMA, resume); :class:`TrainConfig` (``cspnet train``, classification) and
:class:`~cspnet.training.detection_config.DetectionTrainConfig` (``cspnet detect train``) add their
task's fields and defaults. Every constraint is declared on its field (:mod:`cspnet.fields`) and
checked by :meth:`RunConfig.validate` before anything is built, so a bad value is a one-line error
naming the command-line flag. The command line is generated from the fields (:mod:`cspnet.cli.run_options`):
a field's ``doc`` is its flag's help.

>>> TrainConfig(hflip=5).validate()
Traceback (most recent call last):
...
ValueError: --hflip 5 is invalid: expected 0.0 <= hflip <= 1.0
>>> TrainConfig(seed=10**12).validate()
Traceback (most recent call last):
...
ValueError: --seed 1000000000000 is invalid: expected 0 <= seed <= 4294967295
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from cspnet.fields import bounded, check_fields, one_of
from cspnet.metadata import MAX_IMG_SIZE  # the one bound on input sides (L0)
from cspnet.precision import TRAINING_PRECISION_CHOICES as PRECISIONS  # noqa: F401  (the --precision choices)
from cspnet.precision import canonical

OPTIMIZERS = ("sgd", "adamw")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")
# CSPDenseNet-BC-40: 1,438 8x8 digits do not need DenseNet-BC-100's depth, which trains ~3x slower on a CPU.
DEFAULT_MODEL = "cspdensenet_bc40"
DIGITS_IMG_SIZE = 16  # the digits are 8x8; 16 keeps DenseNet-BC's two poolings meaningful and fast on CPU
MAX_BATCH_SIZE = 1 << 16  # far beyond any memory; a bound keeps absurd values out of the data loaders
MAX_SEED = 2**32 - 1  # NumPy's seeds are 32-bit
# What may differ between a run and its resumption: nothing that changes the result, except the
# number of epochs (extending a finished run; the cosine schedule is stretched to the new end).
RESUME_MAY_CHANGE = ("epochs", "output", "resume", "workers", "checkpoint_every")

_Config = TypeVar("_Config", bound="RunConfig")


@dataclass
class RunConfig:
    """What every task's training run shares; ``None`` fields are resolved from the data and the model.

    A subclass names its task (``task``: the registry's ``ModelEntry.task``) and its command, and
    redeclares the fields whose defaults differ.
    """

    task: ClassVar[str] = ""
    command: ClassVar[str] = ""

    model: str = field(default="", metadata={"doc": "registered model"})
    model_overrides: dict[str, Any] = field(default_factory=dict)
    data: str = field(default="digits", metadata={"doc": "'digits' (embedded, default) or your data"})
    val_fraction: float = bounded(0.2, 0.0, 1.0, low_open=True, high_open=True,
                                  doc="share held out for validation when the data has no validation split")  # fmt: skip
    epochs: int = bounded(15, 1, integer=True)
    batch_size: int = bounded(64, 1, MAX_BATCH_SIZE, integer=True, doc="per process")
    lr: float | None = bounded(None, 0.0, low_open=True, optional=True, doc="peak learning rate")
    weight_decay: float | None = bounded(None, 0.0, optional=True, doc="default: sgd 5e-4, adamw 0.05")
    momentum: float = bounded(0.9, 0.0, 1.0, high_open=True, doc="sgd momentum")
    optimizer: str = one_of("sgd", OPTIMIZERS)
    warmup_epochs: float = bounded(1.0, 0.0, doc="linear learning-rate warm-up")
    min_lr_ratio: float = bounded(0.01, 0.0, 1.0, doc="the cosine schedule ends at lr x this")
    img_size: int | None = bounded(None, 1, MAX_IMG_SIZE, optional=True, integer=True, doc="input side")
    precision: str = one_of("fp32", PRECISIONS, doc="Lightning's names are aliases (bf16-mixed, 16-mixed, 32)")
    accelerator: str = one_of("auto", ACCELERATORS, doc="Lightning's names")
    devices: int | None = bounded(None, 1, integer=True, optional=True,
                                  doc="processes per node (default 1, or torchrun's)")  # fmt: skip
    num_nodes: int | None = bounded(None, 1, integer=True, optional=True,
                                    doc="machines (default 1, or torchrun's --nnodes)")  # fmt: skip
    output: str = field(default="runs/train", metadata={"doc": "run folder"})
    resume: bool = field(default=False, metadata={"doc": "continue the run in --output from its last.ckpt, "
                                                          "with its own settings"})  # fmt: skip
    pretrained: str | None = field(default=None, metadata={
        "doc": "start from these weights (any file create_model(pretrained=...) reads, or a checkpoint); "
               "a head for other classes is re-initialised, with a warning"})  # fmt: skip
    ema: bool = field(default=True, metadata={"doc": "evaluate and ship an exponential moving average of the weights"})
    ema_decay: float = bounded(0.998, 0.0, 1.0, low_open=True, high_open=True)
    channels_last: bool = field(default=False, metadata={"doc": "NHWC memory format"})
    grad_checkpointing: bool = field(default=False, metadata={"doc": "recompute blocks in backward (less memory)"})
    seed: int = bounded(0, 0, MAX_SEED, integer=True)
    hflip: float | None = bounded(None, 0.0, 1.0, optional=True,
                                  doc="horizontal flip probability (default: 0 for digits, else 0.5)")  # fmt: skip
    jitter: float = bounded(0.2, 0.0, 1.0, doc="colour jitter strength")
    workers: int | None = bounded(None, 0, integer=True, optional=True,
                                  doc="DataLoader worker processes (default: 0 for digits, else min(4, CPUs))")  # fmt: skip
    checkpoint_every: int = bounded(50, 0, integer=True,
                                    doc="steps between mid-epoch last.ckpt saves (0: epoch ends only)")  # fmt: skip
    limit_train_batches: int | None = bounded(None, 1, integer=True, optional=True, doc="batches per epoch (debugging)")

    def __post_init__(self) -> None:
        self.precision = canonical(self.precision)  # "bf16-mixed" -> "bf16": one name per precision

    # -- checks ------------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise ``ValueError`` (``FileNotFoundError`` for a missing file) with a one-line message for an
        impossible setting."""
        check_fields(self, label=flag)
        self._check_model()
        if self.accelerator in ("gpu", "cuda"):
            import torch

            if not torch.cuda.is_available():
                raise ValueError(f"--accelerator {self.accelerator} is invalid: no CUDA GPU is visible here "
                                 "(use --accelerator cpu or auto)")  # fmt: skip
        if self.pretrained is not None and not Path(self.pretrained).is_file():
            raise FileNotFoundError(f"--pretrained {self.pretrained}: file not found")
        if not self.is_digits and not Path(self.data).exists():
            raise FileNotFoundError(f"--data {self.data}: not found")

    def _check_model(self) -> None:
        """A registered model must be one of this task's (unknown names fail where the model is built,
        with suggestions)."""
        from cspnet.models.registry import list_models

        if self.model in list_models() and self.model not in list_models(task=self.task):
            some = ", ".join(list_models(task=self.task)[:4])
            raise ValueError(f"--model {self.model} is not a {self.task} model: `{self.command}` trains "
                             f"{self.task} models ({some}, ...; `cspnet models --task {self.task}`)")  # fmt: skip

    # -- defaults ----------------------------------------------------------------------------
    @property
    def is_digits(self) -> bool:
        return self.data == "digits"

    @property
    def side(self) -> int:
        """The input side of a :meth:`resolved` config."""
        if self.img_size is None:
            raise RuntimeError("img_size is filled in by resolved()")
        return self.img_size

    def resolved(self: _Config, default_img_size: int) -> _Config:
        """A copy with every ``None`` default filled in (what the run really uses)."""
        digits, sgd = self.is_digits, self.optimizer == "sgd"
        common: dict[str, Any] = {
            "weight_decay": self.weight_decay if self.weight_decay is not None else (5e-4 if sgd else 0.05),
            "hflip": self.hflip if self.hflip is not None else (0.0 if digits else 0.5),  # a mirrored digit is no digit
            "workers": self.workers if self.workers is not None else (0 if digits else min(4, os.cpu_count() or 1)),
        }
        return dataclasses.replace(self, **common, **self._task_defaults(default_img_size))

    def _task_defaults(self, default_img_size: int) -> dict[str, Any]:
        """The task's own ``None`` fields filled in, ``lr`` and ``img_size`` among them."""
        raise NotImplementedError

    def with_data(self: _Config, num_train: int, world_size: int) -> _Config:
        """The defaults that depend on the training data filled in, once it is read (none here; a task's
        config may have some). A resumed run's config has them already, so they never change mid-run."""
        return self

    # -- files -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls: type[_Config], values: dict[str, Any]) -> _Config:
        """The config of a ``config.json`` (unknown keys, from newer versions, are ignored)."""
        known = {f.name for f in dataclasses.fields(cls)}
        config = cls(**{k: v for k, v in values.items() if k in known})
        if isinstance(config.model_overrides, dict):  # JSON has lists where configs hold tuples
            config.model_overrides = {k: tuple(v) if isinstance(v, list) else v
                                      for k, v in config.model_overrides.items()}  # fmt: skip
        return config

    def write(self, folder: Path) -> None:
        """``config.json`` and ``config.yaml`` (YAML written by hand: no extra dependency), atomically."""
        from cspnet.io import atomic_write_text

        values = self.to_dict()
        atomic_write_text(folder / "config.json", json.dumps(values, indent=2) + "\n")
        lines = [f"{k}: {json.dumps(v)}" for k, v in values.items()]  # JSON scalars are valid YAML
        atomic_write_text(folder / "config.yaml", "\n".join(lines) + "\n")


@dataclass
class TrainConfig(RunConfig):
    """Every knob of ``cspnet train`` (image classification)."""

    task: ClassVar[str] = "classification"
    command: ClassVar[str] = "cspnet train"

    model: str = field(default=DEFAULT_MODEL, metadata={"doc": "registered model (`cspnet models`)"})
    data: str = field(default="digits", metadata={"doc": "'digits' (embedded, default) or a folder: "
                      "DATA/train/<class>/*, DATA/val/<class>/*, or DATA/<class>/* (a seeded split is held out)"})  # fmt: skip
    lr: float | None = bounded(None, 0.0, low_open=True, optional=True,
                               doc="peak learning rate (default: sgd 0.1, adamw 2e-3)")  # fmt: skip
    img_size: int | None = bounded(None, 1, MAX_IMG_SIZE, optional=True, integer=True,
                                   doc="input side (default: 16 for digits, else the model's)")  # fmt: skip
    crop_pct: float | None = bounded(None, 0.0, 1.0, low_open=True, optional=True,
                                     doc="evaluation resize: short side to img-size / crop-pct, then a centre crop "
                                         "(default: 1.0 for digits, else 0.875)")  # fmt: skip
    mixup: float = bounded(0.0, 0.0, doc="mixup alpha (0: off)")
    cutmix: float = bounded(0.0, 0.0, doc="cutmix alpha (0: off)")
    label_smoothing: float = bounded(0.1, 0.0, 1.0, high_open=True)
    # smallest random-resized-crop area; digits: 0.6, folders: 0.35
    crop_scale: float | None = bounded(None, 0.0, 1.0, low_open=True, optional=True,
                                       doc="smallest random-resized-crop area (default: 0.6 digits, 0.35 folders)")  # fmt: skip

    def _task_defaults(self, default_img_size: int) -> dict[str, Any]:
        from cspnet.data.transforms import (  # evaluation resize (timm's crop_pct) of folders
            DEFAULT_CROP_PCT,
            DIGITS_CROP_PCT,
        )

        digits = self.is_digits
        return {
            "lr": self.lr if self.lr is not None else (0.1 if self.optimizer == "sgd" else 2e-3),
            "img_size": self.img_size or (DIGITS_IMG_SIZE if digits else default_img_size),
            "crop_pct": self.crop_pct if self.crop_pct is not None else (DIGITS_CROP_PCT if digits else DEFAULT_CROP_PCT),
            "crop_scale": self.crop_scale if self.crop_scale is not None else (0.6 if digits else 0.35),
        }


def flag(name: str, value: Any) -> str:
    """How the command line spells a field: ``--batch-size 0``."""
    return f"--{name.replace('_', '-')} {value}"
