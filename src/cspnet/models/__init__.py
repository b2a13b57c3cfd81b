"""Model families, the registry and ``create_model``.

Each family module (``densenet``, ``resnet``, ``darknet``, ``peleenet``) registers its models when
imported; the ones present are imported here, and then :mod:`cspnet.detection`, whose detectors
(built on these backbones) are in the same registry: whoever asks the registry sees every model.
"""

import importlib
import importlib.util

from cspnet.models.backbone import Backbone, FeatureExtractor, FeatureInfo
from cspnet.models.config import ModelConfig
from cspnet.models.factory import create_model
from cspnet.models.registry import ModelEntry, UnknownModelError, get_model_entry, list_models, register_model

FAMILIES = ("densenet", "resnet", "darknet", "peleenet")
for _family in FAMILIES:
    if importlib.util.find_spec(f"cspnet.models.{_family}") is not None:
        importlib.import_module(f"cspnet.models.{_family}")
importlib.import_module("cspnet.detection")  # last: its detectors are built on the backbones above

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
