"""Model families, the registry and ``create_model``.

Each family module (``densenet``, ``resnet``, ``darknet``, ``peleenet``) registers its models when
imported; the ones present are imported here, and then :mod:`cspnet.models.detectors`, whose
detectors (built on these backbones) are in the same registry: whoever asks the registry sees every model.
"""

# Importing a family registers its models; the detectors come last: they are built on the backbones.
from cspnet.models import darknet, densenet, peleenet, resnet  # noqa: F401

# isort: split
from cspnet.models import detectors  # noqa: F401

# isort: split
from cspnet.models.backbone import Backbone, FeatureExtractor, FeatureInfo
from cspnet.models.config import ModelConfig
from cspnet.models.factory import create_model
from cspnet.models.registry import ModelEntry, UnknownModelError, get_model_entry, list_models, register_model

FAMILIES = ("densenet", "resnet", "darknet", "peleenet")

__all__ = [
    "Backbone",
    "FeatureExtractor",
    "FeatureInfo",
    "ModelConfig",
    "ModelEntry",
    "UnknownModelError",
    "create_model",
    "get_model_entry",
    "list_models",
    "register_model",
]
