"""The images a detector's int8 quantisation is calibrated on, and the held-out ones that check it.

``data`` is what the user has:

* ``"digits"``: the embedded set (calibration on its training canvases, the check on its
  validation canvases, boxes and all);
* a COCO instances ``.json`` or a YOLO ``data.yaml``: its images (the yaml's ``val`` split) in a
  seeded order, the first ``count`` to calibrate on, the rest, with their boxes, to check on;
* a folder of images (searched recursively, no labels): the first ``count`` of a seeded order.

Images are decoded by the one image reader and letterboxed exactly as inference letterboxes them
(:func:`cspnet.detection.data.letterbox_image`), so the int8 ranges are those the deployed model sees.
The draw is seeded: the same data always gives the same int8 file.

>>> split = calibration_split("digits", 64, 8)
>>> tuple(split.images.shape), split.images.dtype, len(split.held_out) > 0, split.description
((8, 3, 64, 64), torch.uint8, True, '8 images of digits')
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

CALIBRATION_SEED = 0


@dataclass
class CalibrationSplit:
    """Calibration images (``uint8 (N, 3, S, S)``, letterboxed) and a labelled held-out set (or ``None``)."""

    images: Tensor
    held_out: Any | None  # a detection data set (letterboxed images, boxes) calibration never saw
    description: str


def _letterboxed(paths: list[Path], size: int, pad_value: int) -> Tensor:
    from cspnet.data.folder import decode_image
    from cspnet.detection.data.boxes import letterbox_image

    images = []
    for path in paths:
        try:
            images.append(letterbox_image(decode_image(path), size, pad_value)[0])
        except ValueError:  # an undecodable file: calibrate on the others
            continue
    if not images:
        raise ValueError(f"none of the {len(paths)} calibration image(s) can be decoded (first: {paths[0]})")
    return torch.stack(images)


def _folder_images(folder: Path) -> list[Path]:
    from cspnet.data.folder import IMAGE_EXTENSIONS

    found = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not found:
        raise ValueError(f"--calibration-data {folder}: no images in this folder")
    return found


def calibration_split(data: str | os.PathLike[str], img_size: int, count: int, *,
                      images: str | os.PathLike[str] | None = None, pad_value: int | None = None,
                      held_out: bool = True) -> CalibrationSplit:  # fmt: skip
    """``count`` calibration images of ``data`` (see the module docstring) at ``img_size``, and the
    held-out labelled set (``held_out=False``: not wanted, so not made); ``images``: a COCO file's image
    folder; ``pad_value``: the letterbox grey (default the training one). ``ValueError`` /
    ``FileNotFoundError`` in one line for unusable data."""
    from cspnet.detection.data import (
        DetectionImages,
        DetectionSource,
        digits_detection_split,
        read_detection_source,
    )
    from cspnet.detection.data.boxes import LETTERBOX_FILL
    from cspnet.detection.data.digits import DIGITS_DETECTION_VAL

    if count < 1:
        raise ValueError(f"calibration image count {count} is invalid: expected a positive integer")
    pad = LETTERBOX_FILL if pad_value is None else pad_value
    if str(data) == "digits":
        # The canvases fill the input: no padding. The validation canvases are rendered only when wanted.
        train, val = digits_detection_split(img_size, train_images=count, val_images=DIGITS_DETECTION_VAL if held_out else 1)
        return CalibrationSplit(train.images[:count], val if held_out else None, f"{count} images of digits")
    path = Path(data)
    if not path.exists():
        raise FileNotFoundError(f"--calibration-data not found: {path} (expected 'digits', an image folder, a COCO "
                                ".json or a YOLO data.yaml)")  # fmt: skip
    gen = torch.Generator().manual_seed(CALIBRATION_SEED)
    if path.is_dir():
        files = _folder_images(path)
        order = torch.randperm(len(files), generator=gen)[:count].tolist()
        chosen = _letterboxed([files[i] for i in order], img_size, pad)
        return CalibrationSplit(chosen, None, f"{len(chosen)} images of {path}")
    source = read_detection_source(path, "val", images)
    order = torch.randperm(len(source.records), generator=gen).tolist()
    first, rest = order[:count], order[count:]
    chosen = _letterboxed([source.records[i].path for i in first], img_size, pad)
    check = None
    if rest and held_out:
        kept = DetectionSource([source.records[i] for i in sorted(rest)], source.classes, source.origin)
        check = DetectionImages(kept, img_size)
    return CalibrationSplit(chosen, check, f"{len(chosen)} images of {path}")
