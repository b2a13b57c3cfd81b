"""Weight files: safe reading, peer-layout conversion (torchvision, timm, darknet), strict loading."""

from cspnet.convert import torchvision as _torchvision  # noqa: F401  (registers its converter)
from cspnet.convert.checkpoint import (
    CheckpointError,
    Converter,
    convert_state_dict,
    load_checkpoint,
    load_weights,
    read_state_dict,
    register_converter,
    register_file_reader,
)

__all__ = [
    "CheckpointError",
    "Converter",
    "convert_state_dict",
    "load_checkpoint",
    "load_weights",
    "read_state_dict",
    "register_converter",
    "register_file_reader",
]
