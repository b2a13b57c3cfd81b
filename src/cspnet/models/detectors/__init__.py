"""YOLO-style detector architectures on any registered backbone: blocks, necks, heads, the registered detectors.

Importing the package registers the detectors with the one model registry (``cspnet.models``
imports it after the backbone families, on which the detectors are built); a detector gives the
one darknet ``.weights`` reader its layer order (``Detector.darknet_layout``). The task around them (data, loss, metrics, export) is :mod:`cspnet.detection`.
"""

from cspnet.models.detectors import zoo as _zoo  # noqa: F401  (registers the detectors)
from cspnet.models.detectors.config import NECKS, YOLOV3_ANCHORS, DetectorConfig
from cspnet.models.detectors.model import Detector, build_detector

__all__ = ["NECKS", "YOLOV3_ANCHORS", "Detector", "DetectorConfig", "build_detector"]
