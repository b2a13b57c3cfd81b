"""Object detection: the task's data, loss and metrics, and the detector architectures' public names.

The detectors themselves live with every other model (:mod:`cspnet.models.detectors`, registered
in the one model registry: ``cspnet.list_models("*_spp")``, ``cspnet.list_models("*_efm")``); build
them with :func:`cspnet.create_model` like any model::

    model = cspnet.create_model("cspdensenet121_efm", num_classes=20)
    model = cspnet.create_model("cspresnext50_panet_spp", backbone="csppeleenet", neck="efm", neck_widths=(64, 128, 256))
"""

from cspnet.models.detectors.blocks import Maxout, SpatialAttention, SpatialPyramidPooling, conv_stack
from cspnet.models.detectors.config import NECKS, YOLOV3_ANCHORS, DetectorConfig
from cspnet.models.detectors.head import YoloHead, decode
from cspnet.models.detectors.model import Detector, build_detector
from cspnet.models.detectors.necks import EFM, FPN, GFM, PANet
from cspnet.ops.boxes import box_iou
from cspnet.ops.nms import batched_nms
from cspnet.ops.postprocess import EVALUATE, PREDICT, Thresholds, postprocess

__all__ = [
    "EFM",
    "EVALUATE",
    "FPN",
    "GFM",
    "NECKS",
    "YOLOV3_ANCHORS",
    "Detector",
    "DetectorConfig",
    "Maxout",
    "PANet",
    "PREDICT",
    "SpatialAttention",
    "SpatialPyramidPooling",
    "Thresholds",
    "YoloHead",
    "batched_nms",
    "box_iou",
    "build_detector",
    "conv_stack",
    "decode",
    "postprocess",
]
