"""Detection data: COCO and YOLO readers, the embedded digits set, letterbox, box-aware augmentation.

>>> from cspnet.detection.data import digits_detection_split
>>> train, val = digits_detection_split(train_images=4, val_images=2)
>>> train[0][1].shape[1]   # rows: label, x1, y1, x2, y2 (input pixels)
5
"""

from cspnet.detection.data.augment import BoxAugment
from cspnet.detection.data.boxes import BoxHygiene, Letterbox, clean_boxes, letterbox_image
from cspnet.detection.data.digits import TensorDetection, digits_detection_split
from cspnet.detection.data.mosaic import Mosaic
from cspnet.detection.data.readers import (
    DetectionImages,
    DetectionSource,
    ImageRecord,
    collate_detection,
    open_image,
    read_coco,
    read_detection_source,
    read_yolo,
    target_rows,
)

__all__ = [
    "BoxAugment",
    "BoxHygiene",
    "DetectionImages",
    "DetectionSource",
    "ImageRecord",
    "Letterbox",
    "Mosaic",
    "TensorDetection",
    "clean_boxes",
    "collate_detection",
    "digits_detection_split",
    "letterbox_image",
    "open_image",
    "read_coco",
    "read_detection_source",
    "read_yolo",
    "target_rows",
]
