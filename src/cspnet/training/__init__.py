"""Training of every task with PyTorch Lightning, from one CPU to many machines (DDP via ``--devices`` or torchrun).

One pipeline (:func:`fit`) runs every task: ``fit(TrainConfig(...))`` trains a classifier,
``fit(DetectionTrainConfig(...))`` a detector (:mod:`cspnet.training.tasks`). The names below are
imported when first used, so that reading a :class:`TrainConfig` (the CLI's ``--help``) does not
load torch and Lightning.

>>> from cspnet.training import TrainConfig
>>> TrainConfig().resolved(default_img_size=32).img_size   # the digits default
16
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from cspnet.training.config import RunConfig, TrainConfig

if TYPE_CHECKING:
    from cspnet.trained import TrainedModel, is_training_checkpoint, load_trained
    from cspnet.training.detection_config import DetectionTrainConfig
    from cspnet.training.resumable import TrainingDiverged
    from cspnet.training.runner import FitResult, Interrupted, fit

_LAZY = {
    "DetectionTrainConfig": "cspnet.training.detection_config",
    "FitResult": "cspnet.training.runner",
    "Interrupted": "cspnet.training.runner",
    "TrainingDiverged": "cspnet.training.resumable",
    "fit": "cspnet.training.runner",
    "TrainedModel": "cspnet.trained",
    "is_training_checkpoint": "cspnet.trained",
    "load_trained": "cspnet.trained",
}

__all__ = ["DetectionTrainConfig", "FitResult", "Interrupted", "RunConfig", "TrainConfig", "TrainedModel",
           "TrainingDiverged", "fit", "is_training_checkpoint", "load_trained"]  # fmt: skip


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cspnet.training' has no attribute {name!r}")
