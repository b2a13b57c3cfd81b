"""A model back from a training checkpoint of any task: ``load_trained`` and ``is_training_checkpoint``.

One reader for ``cspnet train`` (classification) and ``cspnet detect train`` (detection)
checkpoints. A checkpoint may be hand-edited or come from elsewhere, so everything inference takes
from it is checked before use, whatever its task: the task (the one the caller handles, and the
one its model is registered for), the model name and overrides, the class names (one per class),
the input side (at least the network's stride, at most :data:`~cspnet.data.transforms.MAX_IMG_SIZE`),
the normalisation (one finite mean and one positive std per input channel) and the weights (the EMA
ones when the run kept an EMA). Each problem is a one-line :class:`~cspnet.convert.CheckpointError`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

# What each task's commands are called, for messages that send a user to the right one.
COMMANDS = {"classification": "cspnet train", "detection": "cspnet detect train"}
_USE_INSTEAD = {"classification": "cspnet predict / eval / export", "detection": "cspnet detect predict / val / export"}
IDENTITY_NORMALISATION = ([0.0, 0.0, 0.0], [1.0, 1.0, 1.0])
"""Pixels in [0, 1] as they are: what detection checkpoints written before they recorded it used."""


@dataclass
class TrainedModel:
    """A model rebuilt from a training checkpoint, with what inference needs to know.

    ``task`` is ``"classification"`` or ``"detection"``; ``train_config`` is the run's resolved
    config as a dict (empty for a checkpoint that lacks it); ``weights`` says which weights were
    loaded (``"ema"`` or ``"raw"``).
    """

    model: nn.Module
    name: str
    class_names: list[str]
    img_size: int
    mean: list[float]
    std: list[float]
    train_config: dict[str, Any] = field(default_factory=dict)
    weights: str = "ema"
    task: str = "classification"
    category_ids: list[int] | None = None  # detection on COCO data: the category id of each class

    def preprocess(self, images_uint8: torch.Tensor) -> torch.Tensor:
        from cspnet.data.transforms import Normalize

        return Normalize(self.mean, self.std)(images_uint8)


def _read(path: Path) -> Any:
    from cspnet.convert import load_torch_file

    return load_torch_file(path, "training checkpoint")


def is_training_checkpoint(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a checkpoint written by ``cspnet train`` or ``cspnet detect train`` (it names
    its model and classes)."""
    path = Path(path)
    if not path.is_file() or path.suffix.lower() in (".safetensors", ".weights"):
        return False
    try:
        ckpt = _read(path)
    except Exception:  # unreadable or not a torch file: whoever loads it reports why
        return False
    return isinstance(ckpt, dict) and "model_name" in ckpt and "state_dict" in ckpt


def _train_config(ckpt: Mapping[str, Any]) -> dict[str, Any]:
    hparams = ckpt.get("hyper_parameters")
    config = hparams.get("train_config") if isinstance(hparams, Mapping) else None
    return dict(config) if isinstance(config, Mapping) else {}


def _normalisation(ckpt: Mapping[str, Any], key: str, channels: int, where: str) -> list[float]:
    from cspnet.convert import CheckpointError

    values = ckpt.get(key)
    if not isinstance(values, list | tuple) or len(values) != channels:
        raise CheckpointError(f"{where}: {key} must hold {channels} numbers (one per input channel), not {values!r}")
    if not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in values):
        raise CheckpointError(f"{where}: {key} {list(values)!r} must be finite numbers")
    if key == "std" and not all(v > 0 for v in values):
        raise CheckpointError(f"{where}: std {list(values)!r} must be positive")
    return [float(v) for v in values]


def _weights(ckpt: Mapping[str, Any], ema: bool, config: Mapping[str, Any], where: str) -> tuple[Any, str]:
    """The state dict to load and which it is: the EMA's unless ``ema`` is off or the run kept none."""
    from cspnet.convert import CheckpointError

    if ema and "ema_state_dict" in ckpt:
        holder = ckpt["ema_state_dict"]
        if not isinstance(holder, Mapping) or not isinstance(holder.get("module"), Mapping):
            raise CheckpointError(f"{where}: its ema_state_dict holds no 'module' weights (use --no-ema for the raw ones)")
        return holder["module"], "ema"
    if ema and config.get("ema", False):
        raise CheckpointError(
            f"{where}: the run trained with EMA but the checkpoint has no ema_state_dict "
            "(use --no-ema to load the raw weights)"
        )
    raw = ckpt["state_dict"]
    if not isinstance(raw, Mapping):
        raise CheckpointError(f"{where}: its state_dict is a {type(raw).__name__}, not a mapping of tensors")
    state = {k.removeprefix("model."): v for k, v in raw.items() if isinstance(k, str) and k.startswith("model.")}
    if not state:
        raise CheckpointError(f"{where}: its state_dict has no model.* weights")
    return state, "raw"


def _open(path: Path, expected_model: str | None) -> dict[str, Any]:
    """The checkpoint at ``path``, checked to be a training checkpoint of ``expected_model``."""
    from cspnet.convert import CheckpointError

    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    ckpt = _read(path)  # one line for an empty, truncated, foreign or refused file
    if not isinstance(ckpt, dict) or "model_name" not in ckpt or "state_dict" not in ckpt:
        raise CheckpointError(f"{path} is not a training checkpoint of `cspnet train` or `cspnet detect train` "
                              "(no model name / class names in it)")  # fmt: skip
    name = ckpt["model_name"]
    if not isinstance(name, str):
        raise CheckpointError(f"{path}: model_name {name!r} is not a model name")
    if expected_model and expected_model != name:
        raise CheckpointError(f"{path} holds a {name!r} model, not {expected_model!r}")
    return ckpt


def _task(ckpt: Mapping[str, Any], wanted: str | None, where: str) -> str:
    """The checkpoint's task, checked against its model's registry entry and the task the caller handles."""
    from cspnet.convert import CheckpointError
    from cspnet.models import get_model_entry

    task = ckpt.get("task", "classification")  # checkpoints before the task key were classification runs
    if task not in COMMANDS:
        raise CheckpointError(f"{where}: task {task!r} is invalid: expected one of {', '.join(map(repr, COMMANDS))}")
    try:
        registered = get_model_entry(ckpt["model_name"]).task
    except ValueError as exc:  # an unknown model name: the message suggests close ones
        raise CheckpointError(f"{where}: {exc}") from exc
    if registered != task:
        raise CheckpointError(f"{where}: its model {ckpt['model_name']!r} is a {registered} model, but the checkpoint "
                              f"says task {task!r}: the file was edited or is damaged")  # fmt: skip
    if wanted is not None and task != wanted:
        raise CheckpointError(f"{where} is a {task} checkpoint (`{COMMANDS[task]}`): use {_USE_INSTEAD[task]}")
    missing = [k for k in ("num_classes", "class_names", "img_size") if k not in ckpt]
    if missing:
        raise CheckpointError(f"{where}: a `{COMMANDS[task]}` checkpoint needs {', '.join(missing)}, which it lacks")
    return str(task)


def _classes(ckpt: Mapping[str, Any], where: str) -> list[str]:
    """The class names, one per classifier output."""
    from cspnet.convert import CheckpointError

    num_classes = ckpt["num_classes"]
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise CheckpointError(f"{where}: num_classes {num_classes!r} is invalid: expected a positive integer")
    class_names = ckpt["class_names"]
    if not isinstance(class_names, list | tuple) or not all(isinstance(c, str) for c in class_names):
        raise CheckpointError(f"{where}: class_names must be a list of names, not {type(class_names).__name__}")
    if len(class_names) != num_classes:
        raise CheckpointError(f"{where}: {len(class_names)} class names for {num_classes} classes")
    return list(class_names)


def _category_ids(ckpt: Mapping[str, Any], num_classes: int, where: str) -> list[int] | None:
    """The COCO category id of each class, when the run's data had them (``None`` otherwise)."""
    from cspnet.convert import CheckpointError

    ids = ckpt.get("category_ids")
    if ids is None:
        return None
    if (not isinstance(ids, list | tuple) or len(ids) != num_classes or len(set(ids)) != len(ids)
            or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids)):  # fmt: skip
        raise CheckpointError(f"{where}: category_ids must hold one distinct non-negative integer per class "
                              f"({num_classes}), not {str(ids)[:80]}")  # fmt: skip
    return [int(i) for i in ids]


def _rebuild(ckpt: Mapping[str, Any], num_classes: int, where: str) -> nn.Module:
    """The checkpoint's model, freshly initialised, with its recorded overrides."""
    from cspnet.convert import CheckpointError
    from cspnet.models import create_model

    overrides = ckpt.get("model_overrides", {})
    if not isinstance(overrides, Mapping) or not all(isinstance(k, str) for k in overrides):
        raise CheckpointError(f"{where}: model_overrides must map config field names to values")
    try:
        return create_model(ckpt["model_name"], num_classes=num_classes, **dict(overrides))
    except (ValueError, TypeError) as exc:  # unknown model, invalid overrides: the message names them
        raise CheckpointError(f"{where}: cannot rebuild its model: {exc}") from exc


def load_trained(path: str | os.PathLike[str], expected_model: str | None = None, ema: bool = True,
                 task: str | None = None) -> TrainedModel:  # fmt: skip
    """Rebuild the model a training checkpoint holds (EMA weights when it has them).

    ``task`` (``"classification"``, ``"detection"``) is the task the caller handles: a checkpoint of
    the other one is refused with the commands to use instead; ``None`` takes either. Raises
    ``CheckpointError`` for a file that is not such a checkpoint, names another model, or whose
    recorded settings are not usable (see the module docstring).
    """
    from cspnet.convert import CheckpointError
    from cspnet.convert.checkpoint import load_weights
    from cspnet.data.transforms import check_img_size

    path = Path(path)
    where = str(path)
    ckpt = _open(path, expected_model)
    found_task = _task(ckpt, task, where)
    class_names = _classes(ckpt, where)
    model = _rebuild(ckpt, len(class_names), where)
    img_size = ckpt["img_size"]
    try:
        check_img_size(img_size, model, what="its img_size")
    except ValueError as exc:
        raise CheckpointError(f"{where}: {exc}") from exc
    if found_task == "detection" and "mean" not in ckpt and "std" not in ckpt:
        mean, std = IDENTITY_NORMALISATION
    else:
        mean = _normalisation(ckpt, "mean", 3, where)  # the trained models take RGB
        std = _normalisation(ckpt, "std", 3, where)
    config = _train_config(ckpt)
    state, weights = _weights(ckpt, ema, config, where)
    load_weights(model, state, source=where)
    model.eval()
    setattr(model, "name", ckpt["model_name"])  # noqa: B010  (Backbone and Detector both carry their name)
    category_ids = _category_ids(ckpt, len(class_names), where)
    return TrainedModel(model, ckpt["model_name"], class_names, img_size, mean, std, config, weights, found_task,
                        category_ids)  # fmt: skip
