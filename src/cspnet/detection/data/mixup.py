"""Detection mixup and multi-scale training: batch transforms with their boxes, on the global torch RNG.

Both run on whole batches after they reach the device, drawing from the global torch RNG that the
training module seeds per step (a resumed run draws the same blends and sides).

* :class:`DetectionMixup` (YOLOv4's "MixUp" for detection): each image is, with probability ``p``,
  blended with another image of the batch, ``r * own + (1 - r) * other`` with ``r ~ Beta(alpha,
  alpha)`` (``alpha`` 32: ratios near one half, as YOLOv5 draws them), and keeps the boxes of both
  at full weight (the object is still there, only fainter).
* :class:`MultiScale`: the whole batch resized (bilinear) to a random square side, a multiple of
  the detector's stride within ``[1 - range, 1 + range]`` of the run's side, boxes scaled with it.

>>> images = torch.zeros(2, 3, 32, 32); targets = torch.tensor([[0, 0, 4.0, 4.0, 12.0, 12.0], [1, 1, 16.0, 16.0, 30.0, 30.0]])
>>> _ = torch.manual_seed(0)
>>> out, rows = DetectionMixup(p=1.0)(images, targets)
>>> sorted(rows[:, :2].tolist())   # each image holds its own box and its partner's
[[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]]
>>> MultiScale(0.5, stride=8).sides(32)
[16, 24, 32, 40, 48]
>>> MultiScale(0.5, stride=32).sides(416)[0], MultiScale(0.5, stride=32).sides(416)[-1]   # within 208-624
(224, 608)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cspnet.detection.data.boxes import MIN_BOX_SIDE

MIXUP_ALPHA = 32.0  # Beta(32, 32): blend ratios within about 0.4-0.6


class DetectionMixup(nn.Module):
    """``(images (N, C, H, W) float, targets (M, 6): image, class, x1, y1, x2, y2)`` -> the same, blended."""

    def __init__(self, p: float = 0.1, alpha: float = MIXUP_ALPHA) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"mixup={p} is invalid: expected a probability 0 <= p <= 1")
        self.p, self.alpha = p, alpha

    def forward(self, images: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        n = images.shape[0]
        if n < 2 or self.p <= 0:
            return images, targets
        chosen = torch.rand(n) < self.p
        partner = torch.randint(0, n - 1, (n,))
        partner = partner + (partner >= torch.arange(n)).long()  # any image of the batch but itself
        ratio = torch.distributions.Beta(self.alpha, self.alpha).sample((n,))
        index = torch.nonzero(chosen).flatten()
        if len(index) == 0:
            return images, targets
        r = ratio[index].to(images).view(-1, 1, 1, 1)
        out = images.clone()
        out[index] = r * images[index] + (1 - r) * images[partner[index]]
        added = []
        for i in index.tolist():
            rows = targets[targets[:, 0] == int(partner[i])].clone()
            rows[:, 0] = i
            added.append(rows)
        return out, torch.cat([targets, *added])


class MultiScale(nn.Module):
    """A batch resized to a random side of :meth:`sides` (see the module docstring)."""

    def __init__(self, scale_range: float, stride: int) -> None:
        super().__init__()
        if not 0.0 <= scale_range < 1.0:
            raise ValueError(f"multi_scale={scale_range} is invalid: expected 0 <= range < 1")
        self.scale_range, self.stride = scale_range, stride

    def sides(self, side: int) -> list[int]:
        """The sides a batch of ``side`` may be resized to: the stride's multiples within the range (and
        ``side``), at least one stride."""
        low = max(self.stride, math.ceil(side * (1 - self.scale_range) / self.stride) * self.stride)
        high = max(low, math.floor(side * (1 + self.scale_range) / self.stride) * self.stride)
        return sorted({*range(low, high + 1, self.stride), side})

    def forward(self, images: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        height, width = images.shape[-2:]
        sides = self.sides(int(height))
        new = sides[int(torch.randint(0, len(sides), ()))]
        if self.scale_range <= 0 or new == height == width:
            return images, targets
        images = F.interpolate(images, size=(new, new), mode="bilinear", align_corners=False)
        boxes = targets[:, 2:6] * targets.new_tensor([new / width, new / height] * 2)
        keep = ((boxes[:, 2:] - boxes[:, :2]) >= MIN_BOX_SIDE).all(dim=1)
        return images, torch.cat([targets[keep, :2], boxes[keep]], dim=1)
