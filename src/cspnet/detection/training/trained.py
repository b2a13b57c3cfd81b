"""A detector back from a ``cspnet detect train`` checkpoint."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from cspnet.models.detectors.model import Detector


@dataclass
class TrainedDetector:
    """A detector rebuilt from its checkpoint, with its class names and input side."""

    model: Detector
    name: str
    class_names: list[str]
    img_size: int


def load_trained_detector(path: str | os.PathLike[str], expected_model: str | None = None, ema: bool = True) -> TrainedDetector:
    """Rebuild the detector a ``cspnet detect train`` checkpoint holds (EMA weights when it has them).

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
        raise CheckpointError(f"{path} is not a `cspnet detect train` checkpoint (torch cannot read it: "
                              f"{type(exc).__name__})") from exc  # fmt: skip
    if not isinstance(ckpt, dict) or ckpt.get("task") != "detection" or "model_name" not in ckpt:
        raise CheckpointError(f"{path} is not a `cspnet detect train` checkpoint")
    name = ckpt["model_name"]
    if expected_model and expected_model != name:
        raise CheckpointError(f"{path} holds a {name!r} model, not {expected_model!r}")
    model = create_model(name, num_classes=int(ckpt["num_classes"]), **dict(ckpt["model_overrides"]))
    assert isinstance(model, Detector)
    model.name = name
    if ema and "ema_state_dict" in ckpt:
        state = ckpt["ema_state_dict"]["module"]
    else:
        state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    load_weights(model, state, source=str(path))
    model.eval()
    return TrainedDetector(model, name, list(ckpt["class_names"]), int(ckpt["img_size"]))
