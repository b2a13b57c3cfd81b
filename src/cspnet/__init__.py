"""cspnet: Cross Stage Partial Networks (Wang et al., CVPRW 2020) in PyTorch.

>>> import cspnet, torch
>>> model = cspnet.create_model("cspdensenet_bc100", num_classes=10)
>>> model(torch.randn(2, 3, 32, 32)).shape
torch.Size([2, 10])

Importing the package changes nothing outside it (no environment variables, no matplotlib backend)
and imports nothing heavy: the names below load their module, and torch, when first used. That is
what lets the ``cspnet`` command set its documented process defaults (:mod:`cspnet.runtime`) in
its entry point before torch is imported.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cspnet import detection, profiling
    from cspnet.convert import CheckpointError
    from cspnet.export import optimize_for_inference
    from cspnet.models import (
        Backbone,
        FeatureExtractor,
        FeatureInfo,
        UnknownModelError,
        create_model,
        get_model_entry,
        list_models,
    )
    from cspnet.profiling import ModelProfile, profile
    from cspnet.runtime import tune_cpu_allocator

__version__ = "0.1.0"

# Public name -> the module that defines it.
_EXPORTS = {
    "Backbone": "cspnet.models",
    "CheckpointError": "cspnet.convert",
    "FeatureExtractor": "cspnet.models",
    "FeatureInfo": "cspnet.models",
    "ModelProfile": "cspnet.profiling",
    "UnknownModelError": "cspnet.models",
    "create_model": "cspnet.models",
    "get_model_entry": "cspnet.models",
    "list_models": "cspnet.models",
    "optimize_for_inference": "cspnet.export",
    "profile": "cspnet.profiling",
    "tune_cpu_allocator": "cspnet.runtime",
}

__all__ = [
    "Backbone",
    "CheckpointError",
    "FeatureExtractor",
    "FeatureInfo",
    "ModelProfile",
    "UnknownModelError",
    "__version__",
    "create_model",
    "detection",
    "get_model_entry",
    "list_models",
    "optimize_for_inference",
    "profile",
    "profiling",
    "tune_cpu_allocator",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    elif name in ("detection", "profiling"):
        value = importlib.import_module(f"cspnet.{name}")
    else:
        raise AttributeError(f"module 'cspnet' has no attribute {name!r}")
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
