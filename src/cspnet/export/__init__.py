"""Deployment: inference-optimised models, ONNX and TorchScript export."""

from cspnet.export.fold import find_conv_norm_pairs, fold_conv_norm, optimize_for_inference

__all__ = ["find_conv_norm_pairs", "fold_conv_norm", "optimize_for_inference"]
