"""Inference on a CPU through PyTorch, ONNX Runtime or OpenVINO, from any saved form of a model.

>>> from cspnet.inference import BACKENDS, load_model
>>> BACKENDS
('torch', 'onnxruntime', 'openvino')

``load_model(source, backend)`` takes a registered name, a ``cspnet train`` / ``cspnet detect train``
checkpoint, or a file written by ``cspnet export`` / ``cspnet detect export`` (ONNX or TorchScript,
which carry their :class:`ModelInfo`); the :class:`InferenceModel` it returns runs a batch with one
call, and a detector's (:class:`DetectionModel`) runs ``detect(images)`` on paths, PIL images or
arrays. See ``docs/deployment.md``.
"""

from cspnet.cpu import has_native_bf16, physical_cores
from cspnet.inference.base import InferenceModel
from cspnet.inference.detection import DetectionModel, Detections
from cspnet.inference.engines import (
    BACKEND_EXTRAS,
    BackendNotInstalledError,
    OnnxRuntimeEngine,
    OpenVinoEngine,
    TorchEngine,
    onnxruntime_session_options,
)
from cspnet.inference.model import load_model
from cspnet.metadata import ModelInfo, default_info, read_onnx_info
from cspnet.precision import BACKEND_PRECISIONS, BACKENDS

__all__ = [
    "BACKENDS",
    "BACKEND_EXTRAS",
    "BACKEND_PRECISIONS",
    "BackendNotInstalledError",
    "DetectionModel",
    "Detections",
    "InferenceModel",
    "ModelInfo",
    "OnnxRuntimeEngine",
    "OpenVinoEngine",
    "TorchEngine",
    "default_info",
    "has_native_bf16",
    "load_model",
    "onnxruntime_session_options",
    "physical_cores",
    "read_onnx_info",
]
