"""Mosaic augmentation (YOLOv4's): four training images tiled into one, their boxes moved with them.

Runs on a whole batch after it reaches the device, with the global torch RNG (seeded per step by the
training module, so a resumed run draws the same mosaics). Each image of the batch becomes, with
probability ``p``, a 2x2 mosaic of itself and three other images of the batch, split at a random
point of the middle half of the canvas; every tile is its image resized (bilinear) into the tile,
and each box is scaled and shifted with it. A box that ends up narrower or lower than
:data:`~cspnet.detection.data.boxes.MIN_BOX_SIDE` is dropped.

>>> images = torch.zeros(4, 3, 32, 32); targets = torch.tensor([[i, 0, 8.0, 8.0, 24.0, 24.0] for i in range(4)])
>>> out, moved = Mosaic(p=1.0)(images, targets)
>>> tuple(out.shape), int(moved[:, 0].max()) <= 3
((4, 3, 32, 32), True)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cspnet.detection.data.boxes import MIN_BOX_SIDE


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
            tiles = ((0, 0, cx, cy), (cx, 0, width, cy), (0, cy, cx, height), (cx, cy, width, height))
            for source, (x0, y0, x1, y1) in zip(sources, tiles):
                out[i, :, y0:y1, x0:x1] = F.interpolate(images[source : source + 1], size=(y1 - y0, x1 - x0),
                                                        mode="bilinear", align_corners=False)[0]  # fmt: skip
                boxes = rows[source][:, 2:6].clone()
                scale = boxes.new_tensor([(x1 - x0) / width, (y1 - y0) / height] * 2)
                shift = boxes.new_tensor([x0, y0, x0, y0])
                boxes = boxes * scale + shift
                keep = ((boxes[:, 2:] - boxes[:, :2]) >= MIN_BOX_SIDE).all(dim=1)
                moved = torch.cat([rows[source][keep, :2], boxes[keep]], dim=1)
                moved[:, 0] = i
                new_rows.append(moved)
        return out, torch.cat(new_rows) if new_rows else targets[:0]
