"""Box-aware batch augmentation (kornia): random affine (scale, translation), flip, colour jitter.

Runs on whole batches after they reach the device, with the global torch RNG (the training module
seeds it per step, so a resumed run draws the same augmentation). Boxes go through
``kornia.augmentation.AugmentationSequential`` with ``bbox_xyxy`` data keys, which moves each box's
corners with its image; the results are clipped to the input and boxes that lost most of their area
(moved out of the picture) are dropped.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from cspnet.detection.data.boxes import MIN_BOX_SIDE
from cspnet.ops.boxes import box_area, clip_boxes

KEEP_VISIBLE = 0.4  # a box keeps its object if at least this share of its (moved) area stays in the input


def clip_moved_boxes(moved: Tensor, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Clip boxes to an ``(height, width)`` input; the mask of those still showing their object."""
    clipped = clip_boxes(moved, size[0], size[1])
    area, kept_area = box_area(moved), box_area(clipped)
    sides = clipped[:, 2:] - clipped[:, :2]
    keep = (sides >= MIN_BOX_SIDE).all(dim=1) & (kept_area >= KEEP_VISIBLE * area)
    return clipped, keep


class BoxAugment(nn.Module):
    """``(images [0, 1] float (N, 3, S, S), targets (M, 6))`` -> the same, augmented.

    ``scale``: the affine zoom range; ``translate``: the largest shift as a fraction of the side;
    ``hflip``: flip probability (0 for digits: a mirrored digit is no digit); ``jitter``:
    brightness/contrast/saturation strength (0: off).
    """

    def __init__(self, scale: tuple[float, float] = (0.6, 1.4), translate: float = 0.15, hflip: float = 0.5,
                 jitter: float = 0.2) -> None:  # fmt: skip
        super().__init__()
        import kornia.augmentation as K

        ops: list[nn.Module] = [K.RandomAffine(degrees=0.0, translate=(translate, translate), scale=scale, p=1.0)]
        if hflip > 0:
            ops.append(K.RandomHorizontalFlip(p=hflip))
        if jitter > 0:
            ops.append(K.ColorJitter(jitter, jitter, jitter, 0.0, p=0.8))
        self.geometry = K.AugmentationSequential(*ops, data_keys=["input", "bbox_xyxy"])  # type: ignore[arg-type]

    def forward(self, images: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        n = images.shape[0]
        per_image = [targets[targets[:, 0] == i] for i in range(n)]
        # kornia moves points in pixel-centre coordinates (pixel i is centred at i); boxes here have
        # pixel-edge coordinates (pixel i spans i..i+1): shift by half a pixel there and back.
        boxes = [t[:, 2:6] - 0.5 for t in per_image]
        images, moved = self.geometry(images, boxes)
        moved = [m + 0.5 for m in moved]
        rows = []
        for _i, (rows_i, boxes_i) in enumerate(zip(per_image, moved)):
            clipped, keep = clip_moved_boxes(boxes_i.reshape(-1, 4), (images.shape[-2], images.shape[-1]))
            rows.append(torch.cat([rows_i[keep, :2], clipped[keep]], dim=1))
        return images.clamp(0, 1), torch.cat(rows) if rows else targets[:0]
