"""Mosaic augmentation (YOLOv4's): four training images tiled into one, their boxes moved with them.

Runs on a whole batch after it reaches the device, with the global torch RNG (seeded per step by the
training module, so a resumed run draws the same mosaics). Each image of the batch becomes, with
probability ``p``, a 2x2 mosaic of itself and three other images of the batch, split at a random
point of the middle half of the canvas. Every tile shows the part of its image that lies against the
split point, *at the image's own scale* (as YOLOv4's and YOLOv5's mosaics keep it: the four images
laid around the point on a canvas twice the side, and the input's side cut out around it), so objects
keep their size and a tile cuts some of them. A box keeps its object when at least 40 % of its area
stays in its tile (:data:`~cspnet.detection.data.augment.KEEP_VISIBLE`, the affine's rule) and is
clipped to it; narrower or lower than :data:`~cspnet.detection.data.boxes.MIN_BOX_SIDE` it is dropped.

>>> images = torch.zeros(4, 3, 32, 32); targets = torch.tensor([[i, 0, 8.0, 8.0, 24.0, 24.0] for i in range(4)])
>>> out, moved = Mosaic(p=1.0)(images, targets)
>>> tuple(out.shape), int(moved[:, 0].max()) <= 3
((4, 3, 32, 32), True)
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from cspnet.detection.data.augment import clip_moved_boxes


class Mosaic(nn.Module):
    """``(images (N, C, S, S) float, targets (M, 6): image, class, x1, y1, x2, y2)`` -> the same, tiled."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"mosaic={p} is invalid: expected a probability 0 <= p <= 1")
        self.p = p

    def forward(self, images: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        n, _, height, width = images.shape
        if n < 2 or self.p <= 0:
            return images, targets
        chosen = torch.rand(n) < self.p
        out = images.clone()
        rows = [targets[targets[:, 0] == i] for i in range(n)]
        new_rows: list[Tensor] = []
        for i in range(n):
            if not bool(chosen[i]):
                new_rows.append(rows[i])
                continue
            sources = [i, *torch.randint(0, n, (3,)).tolist()]
            cx = int(width * (0.25 + 0.5 * float(torch.rand(()))))
            cy = int(height * (0.25 + 0.5 * float(torch.rand(()))))
            # (tile in the output, where the source image is shifted to): each image's corner that
            # faces the split point is the part that shows.
            tiles = (((0, 0, cx, cy), (cx - width, cy - height)), ((cx, 0, width, cy), (cx, cy - height)),
                     ((0, cy, cx, height), (cx - width, cy)), ((cx, cy, width, height), (cx, cy)))  # fmt: skip
            for source, ((x0, y0, x1, y1), (dx, dy)) in zip(sources, tiles):
                out[i, :, y0:y1, x0:x1] = images[source, :, y0 - dy : y1 - dy, x0 - dx : x1 - dx]
                boxes = rows[source][:, 2:6] + rows[source].new_tensor([dx, dy, dx, dy])
                clipped, keep = clip_moved_boxes(boxes - boxes.new_tensor([x0, y0, x0, y0]), (y1 - y0, x1 - x0))
                moved = torch.cat([rows[source][keep, :2], clipped[keep] + boxes.new_tensor([x0, y0, x0, y0])], dim=1)
                moved[:, 0] = i
                new_rows.append(moved)
        return out, torch.cat(new_rows) if new_rows else targets[:0]
