"""Box geometry of the detection data: hygiene (clip, drop degenerate boxes) and the letterbox.

Boxes are ``(K, 4)`` float tensors ``x1, y1, x2, y2`` in pixels of the image they belong to
(pixel edges: a box covering the whole ``W x H`` image is ``0, 0, W, H``); their geometry (clip,
convert) is :mod:`cspnet.ops.boxes`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from cspnet.ops.boxes import clip_boxes

MIN_BOX_SIDE = 1.0
"""A box narrower or lower than this (in pixels of its image, after clipping) is degenerate."""


@dataclass
class BoxHygiene:
    """Counts what :func:`clean_boxes` changed over a whole data set, reported in one warning."""

    clipped: int = 0
    dropped: int = 0
    examples: list[str] = field(default_factory=list)  # where the first problems were, for the message

    def note(self, where: str, clipped: int, dropped: int) -> None:
        self.clipped += clipped
        self.dropped += dropped
        if (clipped or dropped) and len(self.examples) < 3:
            self.examples.append(where)

    def message(self, source: str) -> str | None:
        """The one warning for ``source``, or ``None`` when every box was fine."""
        if not self.clipped and not self.dropped:
            return None
        return (f"{source}: {self.clipped} box(es) outside their image clipped, {self.dropped} degenerate box(es) "
                f"(narrower than {MIN_BOX_SIDE:g} px) dropped; first in {', '.join(self.examples)}")  # fmt: skip


def clean_boxes(boxes: Tensor, labels: Tensor, width: float, height: float) -> tuple[Tensor, Tensor, int, int]:
    """Clip ``boxes`` to the ``width x height`` image and drop the degenerate ones.

    Returns the kept boxes and labels, how many boxes were clipped and how many were dropped (a
    dropped box is not also counted as clipped).

    >>> b, l, clipped, dropped = clean_boxes(torch.tensor([[-5.0, 2, 8, 9], [3, 3, 3, 7]]), torch.tensor([1, 2]), 10, 10)
    >>> b.tolist(), l.tolist(), clipped, dropped
    ([[0.0, 2.0, 8.0, 9.0]], [1], 1, 1)
    """
    if boxes.numel() == 0:
        return boxes.reshape(0, 4).float(), labels.reshape(0).long(), 0, 0
    boxes = boxes.float()
    clipped = clip_boxes(boxes, height, width)
    # x2 < x1 (a box given inside out) is degenerate too: its side is negative.
    keep = ((clipped[:, 2] - clipped[:, 0]) >= MIN_BOX_SIDE) & ((clipped[:, 3] - clipped[:, 1]) >= MIN_BOX_SIDE)
    changed = (clipped != boxes).any(dim=1) & keep
    return clipped[keep], labels[keep].long(), int(changed.sum()), int((~keep).sum())


@dataclass(frozen=True)
class Letterbox:
    """How an image was fitted into a square input: ``input = image * scale + pad`` per axis.

    >>> lb = Letterbox.fit(width=200, height=100, size=64)
    >>> lb.resized, (lb.pad_x, lb.pad_y)
    ((64, 32), (0, 16))
    >>> lb.to_input(torch.tensor([[0.0, 0, 200, 100]])).tolist()
    [[0.0, 16.0, 64.0, 48.0]]
    >>> lb.to_image(lb.to_input(torch.tensor([[10.0, 20, 30, 40]]))).round(decimals=3).tolist()
    [[10.0, 20.0, 30.0, 40.0]]
    """

    width: int  # the original image
    height: int
    size: int  # the square input side
    resized: tuple[int, int]  # (width, height) of the image inside the input
    pad_x: int  # left padding
    pad_y: int  # top padding

    @classmethod
    def fit(cls, width: int, height: int, size: int) -> Letterbox:
        """The largest scale that fits the image into ``size x size`` (aspect kept), centred."""
        scale = min(size / width, size / height)
        new_w, new_h = max(1, min(size, round(width * scale))), max(1, min(size, round(height * scale)))
        return cls(width, height, size, (new_w, new_h), (size - new_w) // 2, (size - new_h) // 2)

    @property
    def scale_x(self) -> float:
        return self.resized[0] / self.width

    @property
    def scale_y(self) -> float:
        return self.resized[1] / self.height

    def _affine(self) -> tuple[Tensor, Tensor]:
        scale = torch.tensor([self.scale_x, self.scale_y, self.scale_x, self.scale_y])
        offset = torch.tensor([self.pad_x, self.pad_y, self.pad_x, self.pad_y], dtype=torch.float32)
        return scale, offset

    def to_input(self, boxes: Tensor) -> Tensor:
        """Image pixels -> input pixels."""
        scale, offset = self._affine()
        return boxes.float() * scale + offset

    def to_image(self, boxes: Tensor) -> Tensor:
        """Input pixels -> image pixels (detections back on the user's image), clipped to it."""
        scale, offset = self._affine()
        out = (boxes.float() - offset.to(boxes.device)) / scale.to(boxes.device)
        return clip_boxes(out, self.height, self.width)


LETTERBOX_FILL = 114  # the grey of the padding (YOLO's convention)


def letterbox_image(image: object, size: int, fill: int = LETTERBOX_FILL) -> tuple[Tensor, Letterbox]:
    """A PIL image -> ``uint8 (3, size, size)`` with the image resized (bilinear) and centred on grey ``fill``."""
    import numpy as np
    from PIL import Image

    assert isinstance(image, Image.Image)
    lb = Letterbox.fit(image.width, image.height, size)
    resized = image.convert("RGB").resize(lb.resized, Image.Resampling.BILINEAR)
    canvas = torch.full((3, size, size), fill, dtype=torch.uint8)
    array = torch.from_numpy(np.asarray(resized, dtype=np.uint8).copy()).permute(2, 0, 1)
    canvas[:, lb.pad_y : lb.pad_y + lb.resized[1], lb.pad_x : lb.pad_x + lb.resized[0]] = array
    return canvas, lb
