"""The one model registry: a name maps to a family builder and the config instance it builds."""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from cspnet.models.config import ModelConfig

Builder = Callable[[Any, int, int], nn.Module]
"""``builder(config, num_classes, in_chans) -> model`` (a ``Backbone``; a ``Detector`` for detectors)."""


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: its family builder, its config, and what users need to know about it."""

    name: str
    builder: Builder
    config: ModelConfig
    description: str
    input_size: tuple[int, int, int] = (3, 224, 224)
    num_classes: int = 1000
    """What ``create_model`` builds when no ``num_classes`` is given (80 COCO classes for detectors)."""
    task: str = "classification"
    """``"classification"`` (a :class:`~cspnet.models.Backbone`) or ``"detection"`` (a ``Detector``)."""
    pretrained_url: str | None = None
    """Where ``pretrained=True`` fetches weights (in the peer's format; converted on load)."""
    published: tuple[dict[str, Any], ...] = ()
    """Published reference figures, one dict per source. Keys (all optional but ``source``):
    ``source`` (e.g. "torchvision", "timm", "paper README"), ``input`` (the side length the cost
    figures are for), ``params`` (PyTorch parameter count), ``conv_weight_params`` (the paper's
    #Parameter: conv kernels only), ``gmacs`` (torchvision/timm GMACs), ``bflops`` (darknet BFLOPs =
    2 x conv GMACs), ``elastic_bflops`` (2 x what ELASTIC's FLOP counter reports: multiply-adds plus BN,
    ReLU and pool elements), ``cio_m`` (HarDNet CIO in millions), ``top1`` / ``top5`` (ImageNet, percent)."""


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(entry: ModelEntry) -> ModelEntry:
    if entry.name in _REGISTRY:
        raise ValueError(f"model {entry.name!r} is already registered")
    _REGISTRY[entry.name] = entry
    return entry


class UnknownModelError(ValueError):
    """Raised for a model name that is not registered; the message suggests the closest names."""


def get_model_entry(name: str) -> ModelEntry:
    """The registry entry of ``name``; an unknown name raises ``UnknownModelError`` with suggestions."""
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see `cspnet models` for the list"
        raise UnknownModelError(f"unknown model {name!r}{hint}") from None


TASKS: tuple[str, ...] = ("classification", "detection")


def require_classifier(name: str, command: str) -> None:
    """Raise ``ValueError`` if ``name`` is a registered detector: ``command`` handles classifiers only."""
    entry = get_model_entry(name)
    if entry.task != "classification":
        raise ValueError(
            f"{command} handles classification models; {name!r} is a {entry.task} model "
            "(build it with cspnet.create_model; see docs/detection-models.md)"
        )


def list_models(pattern: str = "*", task: str | None = None) -> list[str]:
    """Registered model names matching a shell-style wildcard ``pattern``, sorted; ``task`` keeps
    only ``"classification"`` or ``"detection"`` models (default: both).

    >>> import cspnet
    >>> cspnet.list_models("cspdensenet*", task="classification")[:2]
    ['cspdensenet121', 'cspdensenet169']
    >>> cspnet.list_models("*_panet_spp")
    ['cspdarknet53_panet_spp', 'cspresnet50_panet_spp', 'cspresnext50_panet_spp']
    """
    if task is not None and task not in TASKS:
        raise ValueError(f"task={task!r} is invalid: expected one of {', '.join(map(repr, TASKS))} or None")
    return sorted(
        n for n, e in _REGISTRY.items() if fnmatch.fnmatchcase(n, pattern) and (task is None or e.task == task)
    )
