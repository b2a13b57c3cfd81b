"""YOLO-style object detectors on any registered backbone: necks, heads, NMS and the registered models.

Importing the package registers the detectors (``cspnet.list_models("*_spp")``,
``cspnet.list_models("*_efm")``) with the one model registry; build them with
:func:`cspnet.create_model` like any model::

    model = cspnet.create_model("cspdensenet121_efm", num_classes=20)
    model = cspnet.create_model("cspresnext50_panet_spp", backbone="csppeleenet", neck="efm", neck_widths=(64, 128, 256))
"""

from cspnet.detection import darknet as _darknet  # noqa: F401  (registers the detector .weights reader)
from cspnet.detection import zoo as _zoo  # noqa: F401  (registers the detectors)
from cspnet.detection.blocks import Maxout, SpatialAttention, SpatialPyramidPooling, conv_stack
from cspnet.detection.config import NECKS, YOLOV3_ANCHORS, DetectorConfig
from cspnet.detection.head import YoloHead, decode, postprocess
from cspnet.detection.model import Detector, build_detector
from cspnet.detection.necks import EFM, FPN, GFM, PANet
from cspnet.detection.nms import batched_nms, box_iou

__all__ = [
    "EFM",
    "FPN",
    "GFM",
    "NECKS",
    "YOLOV3_ANCHORS",
    "Detector",
    "DetectorConfig",
    "Maxout",
    "PANet",
    "SpatialAttention",
    "SpatialPyramidPooling",
    "YoloHead",
    "batched_nms",
    "box_iou",
    "build_detector",
    "conv_stack",
    "decode",
    "postprocess",
]
