"""cspnet: Cross Stage Partial Networks (Wang et al., CVPRW 2020) in PyTorch.

>>> import cspnet, torch
>>> model = cspnet.create_model("cspdensenet_bc100", num_classes=10)
>>> model(torch.randn(2, 3, 32, 32)).shape
torch.Size([2, 10])
"""

import os

# OpenMP threads that spin while waiting starve each other as soon as another process shares the
# cores: a DenseNet training step measured 14 s instead of 0.9 s on a busy 2-core machine. Passive
# waiting is the safe default; export OMP_WAIT_POLICY=ACTIVE on a dedicated machine. (Read when
# torch is first imported, so it has no effect if torch was imported before cspnet.)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from cspnet import profiling  # noqa: E402
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
    "get_model_entry",
    "list_models",
    "optimize_for_inference",
    "profile",
    "profiling",
]
