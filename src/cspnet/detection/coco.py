"""COCO's 80 detection classes: their names and category ids, and class names read from a file.

Detectors trained on COCO (darknet's ``.weights`` among them) output the 80 classes in the order of
the category ids; ``coco.names`` lists them in that order. Writing COCO results needs the ids
themselves, which skip 11 numbers (12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91 are unused in 2017).

>>> len(COCO_NAMES), COCO_NAMES[0], COCO_NAMES[-1], COCO_CATEGORY_IDS[:3], COCO_CATEGORY_IDS[-1]
(80, 'person', 'toothbrush', (1, 2, 3), 90)
>>> class_names_from("coco")[1][:2]
(1, 2)
"""

from __future__ import annotations

import os
from pathlib import Path

COCO_NAMES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush",
)  # fmt: skip
"""The 80 class names, in category-id order (darknet's ``coco.names``)."""

COCO_CATEGORY_IDS: tuple[int, ...] = (
    *range(1, 12), *range(13, 26), 27, 28, *range(31, 45), *range(46, 66), 67, 70, *range(72, 83), *range(84, 91),
)
"""The COCO category id of each of :data:`COCO_NAMES`."""

MAX_NAMES_BYTES = 4 * 2**20  # a class-names file larger than this is not one


def class_names_from(spec: str | os.PathLike[str]) -> tuple[tuple[str, ...], tuple[int, ...] | None]:
    """``(class names, COCO category ids or None)`` for ``--names``: ``"coco"``, or a text file with one
    name per line (darknet's ``.names``; blank lines and surrounding spaces ignored).

    ``FileNotFoundError`` / ``ValueError`` in one line for a missing, oversized, non-UTF-8 or empty file.
    """
    if str(spec) == "coco":
        return COCO_NAMES, COCO_CATEGORY_IDS
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"--names {path}: not 'coco' and not a file of class names")
    if path.stat().st_size > MAX_NAMES_BYTES:
        raise ValueError(f"--names {path}: larger than {MAX_NAMES_BYTES:,} bytes, not a list of class names")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"--names {path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    names = tuple(line.strip() for line in text.split("\n") if line.strip())
    if not names:
        raise ValueError(f"--names {path}: no class names in it (expected one per line)")
    return names, None
