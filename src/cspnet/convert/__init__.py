"""Weight files: safe reading, peer-layout conversion (torchvision, timm, darknet), strict loading."""

# Importing a peer module registers its converter / file reader.
from cspnet.convert import darknet as _darknet  # noqa: F401  (darknet .weights reader)
from cspnet.convert import timm as _timm  # noqa: F401  (timm CSP checkpoints)
from cspnet.convert import torchvision as _torchvision  # noqa: F401  (torchvision DenseNet checkpoints)
from cspnet.convert.checkpoint import (
    CheckpointError,
    Converter,
    convert_state_dict,
    load_checkpoint,
    load_torch_file,
    load_weights,
    read_state_dict,
    register_converter,
    register_file_reader,
)
from cspnet.convert.darknet import write_darknet_weights

__all__ = [
    "CheckpointError",
    "Converter",
    "convert_state_dict",
    "load_checkpoint",
    "load_torch_file",
    "load_weights",
    "read_state_dict",
    "register_converter",
    "register_file_reader",
    "write_darknet_weights",
]
