"""cspnet: Cross Stage Partial Networks (Wang et al., CVPRW 2020) in PyTorch.

>>> import cspnet, torch
>>> model = cspnet.create_model("cspdensenet_bc100", num_classes=10)
>>> model(torch.randn(2, 3, 32, 32)).shape
torch.Size([2, 10])
"""

from typing import TYPE_CHECKING, Any

from cspnet.runtime import default_openmp_wait_policy, tune_cpu_allocator

# Before torch is imported: OpenMP reads the policy once (see cspnet.runtime for the measurements).
default_openmp_wait_policy()

# The public names are imported on first use (PEP 562): ``import cspnet`` stays cheap, so the
# ``cspnet`` command starts without torch for ``--help``, ``--version`` and ``models``.
_LAZY = {
    "Backbone": "cspnet.models",
    "FeatureExtractor": "cspnet.models",
    "FeatureInfo": "cspnet.models",
    "UnknownModelError": "cspnet.models",
    "create_model": "cspnet.models",
    "get_model_entry": "cspnet.models",
    "list_models": "cspnet.models",
    "CheckpointError": "cspnet.convert",
    "optimize_for_inference": "cspnet.export",
    "ModelProfile": "cspnet.profiling",
    "profile": "cspnet.profiling",
}

if TYPE_CHECKING:
    from cspnet import profiling
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


def __getattr__(name: str) -> Any:
    import importlib

    if name == "profiling":
        return importlib.import_module("cspnet.profiling")
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'cspnet' has no attribute {name!r}")


__version__ = "0.1.0"

__all__ = [
    "Backbone",
    "CheckpointError",
    "FeatureExtractor",
    "FeatureInfo",
    "ModelProfile",
    "UnknownModelError",
    "__version__",
    "create_model",
    "get_model_entry",
    "list_models",
    "optimize_for_inference",
    "profile",
    "profiling",
    "tune_cpu_allocator",
]
