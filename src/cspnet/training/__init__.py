"""Training with PyTorch Lightning: from one CPU to many machines (DDP via ``--devices`` or torchrun).

>>> from cspnet.training import TrainConfig
>>> TrainConfig().resolved(default_img_size=32).img_size   # the digits default
16
"""

from cspnet.training.config import TrainConfig
from cspnet.training.runner import FitResult, check_img_size, fit
from cspnet.training.trained import TrainedModel, is_training_checkpoint, load_trained

__all__ = ["FitResult", "TrainConfig", "TrainedModel", "check_img_size", "fit", "is_training_checkpoint", "load_trained"]
