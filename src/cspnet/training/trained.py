"""A model back from a ``cspnet train`` checkpoint: ``load_trained`` and ``is_training_checkpoint``."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn


@dataclass
class TrainedModel:
    """A model rebuilt from a ``cspnet train`` checkpoint, with what inference needs to know."""

    model: nn.Module
    name: str
    class_names: list[str]
    img_size: int
    mean: list[float]
    std: list[float]

    def preprocess(self, images_uint8: torch.Tensor) -> torch.Tensor:
        from cspnet.data.transforms import Normalize

        return Normalize(self.mean, self.std)(images_uint8)


def is_training_checkpoint(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a checkpoint written by ``cspnet train`` (it names its model and classes)."""
    path = Path(path)
    if not path.is_file() or path.suffix.lower() in (".safetensors", ".weights"):
        return False
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # unreadable or not a torch file: whoever loads it reports why
        return False
    return isinstance(ckpt, dict) and "model_name" in ckpt and "state_dict" in ckpt


def load_trained(path: str | os.PathLike[str], expected_model: str | None = None, ema: bool = True) -> TrainedModel:
    """Rebuild the model a ``cspnet train`` checkpoint holds (EMA weights when it has them).

    Raises ``CheckpointError`` for a file that is not such a checkpoint or names another model.
    """
    from cspnet import create_model
    from cspnet.convert import CheckpointError
    from cspnet.convert.checkpoint import load_weights

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot read checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(ckpt, dict) or "model_name" not in ckpt or "state_dict" not in ckpt:
        raise CheckpointError(f"{path} is not a `cspnet train` checkpoint (no model name / class names in it)")
    name = ckpt["model_name"]
    if expected_model and expected_model != name:
        raise CheckpointError(f"{path} holds a {name!r} model, not {expected_model!r}")
    model = create_model(name, num_classes=int(ckpt["num_classes"]), **dict(ckpt["model_overrides"]))
    model.name = name
    if ema and "ema_state_dict" in ckpt:
        state = ckpt["ema_state_dict"]["module"]
    else:
        state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    load_weights(model, state, source=str(path))
    model.eval()
    return TrainedModel(model, name, list(ckpt["class_names"]), int(ckpt["img_size"]), ckpt["mean"], ckpt["std"])
