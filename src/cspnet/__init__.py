"""cspnet: Cross Stage Partial Networks (Wang et al., CVPRW 2020) in PyTorch.

>>> import cspnet, torch
>>> model = cspnet.create_model("cspdensenet_bc100", num_classes=10)
>>> model(torch.randn(2, 3, 32, 32)).shape
torch.Size([2, 10])
"""

from cspnet import profiling
from cspnet.convert import CheckpointError
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
    "profile",
    "profiling",
]
