"""Model families, the registry and ``create_model``. Importing a family module registers its models."""

from cspnet.models import densenet  # noqa: F401  (registers the DenseNet family)
from cspnet.models.backbone import Backbone, FeatureExtractor, FeatureInfo
from cspnet.models.config import ModelConfig
from cspnet.models.factory import create_model
from cspnet.models.registry import ModelEntry, UnknownModelError, get_model_entry, list_models, register_model

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
