"""Test-time augmentation (``cspnet detect val|predict --augment``): each image is also seen mirrored and
smaller, and the boxes of every view, mapped back onto the image, meet in one NMS.

A *view* is an image flipped left-right (or not) and shrunk by a scale (bilinear, antialiased), placed
in the top-left corner of a canvas of the input's size filled with the letterbox grey: every view has
the input's shape, so a model whose input size is fixed (an exported file) runs them as they are. Its
decoded boxes (input pixels, pixel edges) are mapped back exactly (divided by the scale actually used
per axis, then mirrored), and the boxes and class scores of all views are concatenated before the
post-processing: NMS keeps, for each object, the best-scored of the views' boxes. Shrunk views help
with objects larger than the training objects; the mirrored one averages out a left-right bias.

:data:`VIEWS` are the default views: the image itself, mirrored at 0.83 and at 0.67 (the scales and
flips that YOLOv5-style test-time augmentation uses). The first view is the plain prediction, so
``views=VIEWS[:1]`` gives exactly the result without augmentation.

>>> import torch
>>> def run(x):  # a "model" that finds the bright square, as decoded (boxes, scores)
...     rows, cols = torch.nonzero(x[0, 0] > 0.5, as_tuple=True)
...     box = torch.stack([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]).float()
...     return box.reshape(1, 1, 4), torch.ones(1, 1, 1)
>>> image = torch.zeros(1, 3, 64, 64); image[..., 10:30, 40:60] = 1.0
>>> boxes, scores = augmented_predictions(run, image, (View(1.0), View(0.5, flip=True)))
>>> boxes.round().tolist()  # every view's box lands on the square: x 40-60, y 10-30
[[[40.0, 10.0, 60.0, 30.0], [40.0, 10.0, 60.0, 30.0]]]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from cspnet.detection.data.boxes import LETTERBOX_FILL

Decoded = tuple[Tensor, Tensor]  # boxes (N, K, 4) xyxy input pixels, class scores (N, K, C)


@dataclass(frozen=True)
class View:
    """One augmented view: the image shrunk by ``scale`` (0 < scale <= 1), mirrored left-right if ``flip``."""

    scale: float = 1.0
    flip: bool = False

    def __post_init__(self) -> None:
        if not 0.0 < self.scale <= 1.0:
            raise ValueError(f"a test-time view's scale must be in (0, 1], not {self.scale}")


VIEWS: tuple[View, ...] = (View(1.0), View(0.83, flip=True), View(0.67))


def view_image(images: Tensor, view: View) -> tuple[Tensor, tuple[float, float]]:
    """``images`` ``(N, C, H, W)`` (uint8, or floats in [0, 1]) as ``view`` sees them (same shape and dtype),
    and the scale used per axis ``(x, y)`` (the side is rounded to whole pixels)."""
    height, width = images.shape[-2:]
    x = images.flip(-1) if view.flip else images
    if view.scale == 1.0:
        return x, (1.0, 1.0)
    h, w = max(1, round(height * view.scale)), max(1, round(width * view.scale))
    integer = not images.is_floating_point()
    small = F.interpolate(x.float(), size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    fill = LETTERBOX_FILL if integer else LETTERBOX_FILL / 255.0
    canvas = images.new_full(images.shape, fill)
    canvas[..., :h, :w] = small.round().clamp(0, 255).to(images.dtype) if integer else small.to(images.dtype)
    return canvas, (w / width, h / height)


def boxes_to_image(boxes: Tensor, view: View, scale: tuple[float, float], width: int) -> Tensor:
    """Boxes found on a view, mapped back onto the image (``width``: its width in pixels)."""
    sx, sy = scale
    out = boxes / boxes.new_tensor([sx, sy, sx, sy])
    if view.flip:
        out = torch.stack([width - out[..., 2], out[..., 1], width - out[..., 0], out[..., 3]], -1)
    return out


def augmented_predictions(run: Callable[[Tensor], Decoded], images: Tensor,
                          views: Sequence[View] = VIEWS) -> Decoded:  # fmt: skip
    """Decoded boxes and scores of every view of ``images`` (``(N, C, H, W)``, uint8 or floats in [0, 1]),
    mapped back onto the images and concatenated along the box axis, ready for the post-processing.

    ``run`` takes a batch of images like ``images`` (same shape and dtype) and returns the model's
    decoded ``(boxes, scores)``: e.g. ``lambda x: model.decode(model(x))`` for a
    :class:`~cspnet.models.detectors.Detector`, or an engine's preprocessing and run for letterboxed
    uint8 images. A graph with NMS inside cannot be augmented (its boxes are already suppressed).
    """
    if not views:
        raise ValueError("test-time augmentation needs at least one view")
    width = images.shape[-1]
    all_boxes, all_scores = [], []
    for view in views:
        x, scale = view_image(images, view)
        boxes, scores = run(x)
        all_boxes.append(boxes_to_image(boxes, view, scale, width))
        all_scores.append(scores)
    return torch.cat(all_boxes, 1), torch.cat(all_scores, 1)


def decoded_predictions(model: Callable[[Tensor], list[Tensor]], images: Tensor, augment: bool = False) -> Decoded:
    """A :class:`~cspnet.models.detectors.Detector`'s decoded ``(boxes, scores)`` for ``images`` (floats in
    [0, 1]): ``model.decode(model(images))``, or with ``augment`` those of every view of :data:`VIEWS`.
    What ``detect val`` and ``detect predict`` call."""
    decode = model.decode  # type: ignore[attr-defined]
    if not augment:
        return decode(model(images))
    return augmented_predictions(lambda x: decode(model(x)), images)
