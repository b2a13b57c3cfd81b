"""Deployment: inference-optimised models, ONNX and TorchScript export.

>>> import cspnet, torch
>>> from cspnet.export import optimize_for_inference
>>> fast = optimize_for_inference(cspnet.create_model("densenet_bc100", num_classes=10))
>>> fast(torch.randn(1, 3, 32, 32).to(memory_format=torch.channels_last)).shape
torch.Size([1, 10])
"""

from cspnet.export.fold import (
    find_conv_norm_pairs,
    find_conv_pool_pairs,
    fold_conv_norm,
    optimize_for_inference,
    pool_before_pointwise_conv,
)
from cspnet.export.formats import (
    EXPORT_FORMATS,
    ExportResult,
    export_model,
    export_onnx,
    export_torchscript,
    load_runner,
    relative_difference,
)

__all__ = [
    "EXPORT_FORMATS",
    "ExportResult",
    "export_model",
    "export_onnx",
    "export_torchscript",
    "find_conv_norm_pairs",
    "find_conv_pool_pairs",
    "fold_conv_norm",
    "load_runner",
    "optimize_for_inference",
    "pool_before_pointwise_conv",
    "relative_difference",
]
