"""cspnet: Cross Stage Partial Networks (Wang et al., CVPRW 2020) in PyTorch.

>>> import cspnet, torch
>>> model = cspnet.create_model("cspdensenet_bc100", num_classes=10)
>>> model(torch.randn(2, 3, 32, 32)).shape
torch.Size([2, 10])
"""

from cspnet.runtime import default_openmp_wait_policy, tune_cpu_allocator

# Before torch is imported: OpenMP reads the policy once (see cspnet.runtime for the measurements).
default_openmp_wait_policy()

from cspnet import detection, profiling  # noqa: E402
from cspnet.convert import CheckpointError  # noqa: E402
from cspnet.export import optimize_for_inference  # noqa: E402
from cspnet.models import (  # noqa: E402
    Backbone,
    FeatureExtractor,
    FeatureInfo,
    UnknownModelError,
    create_model,
    get_model_entry,
    list_models,
)
from cspnet.profiling import ModelProfile, profile  # noqa: E402

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
    "detection",
    "get_model_entry",
    "list_models",
    "optimize_for_inference",
    "profile",
    "profiling",
    "tune_cpu_allocator",
]
