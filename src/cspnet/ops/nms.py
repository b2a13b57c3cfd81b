"""Box IoU and class-aware non-maximum suppression, written here and tested against a brute force.

torchvision (whose ``batched_nms`` is the usual choice) is not a dependency of this project and
cannot be installed next to its pinned torch, so the detectors use these small functions instead.
They are TorchScript-compatible and use only device-agnostic tensor ops (tested on the CPU).

Conventions (torchvision's): boxes are ``(x1, y1, x2, y2)``; a box suppresses a lower-scored box of
the *same label* whose IoU with it is strictly greater than ``iou_threshold``; equal scores keep the
order of the input (the earlier box wins); the kept indices come back in decreasing score order.
"""

from __future__ import annotations

import torch
from torch import Tensor


def box_area(boxes: Tensor) -> Tensor:
    """Areas of ``(N, 4)`` xyxy boxes (0 for degenerate boxes).

    >>> box_area(torch.tensor([[0.0, 0.0, 2.0, 3.0]])).tolist()
    [6.0]
    """
    return (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """The ``(N, M)`` IoU matrix of xyxy boxes ``a`` ``(N, 4)`` and ``b`` ``(M, 4)``; 0 where a union is empty.

    >>> box_iou(torch.tensor([[0.0, 0, 2, 2]]), torch.tensor([[1.0, 1, 3, 3], [4.0, 4, 5, 5]])).tolist()
    [[0.1428571492433548, 0.0]]
    """
    top_left = torch.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = (bottom_right - top_left).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    nonempty = union > 0
    return torch.where(nonempty, inter / torch.where(nonempty, union, torch.ones_like(union)), torch.zeros_like(inter))


def batched_nms(boxes: Tensor, scores: Tensor, labels: Tensor, iou_threshold: float) -> Tensor:
    """Class-aware greedy NMS: indices of the kept boxes, highest score first.

    Boxes with different ``labels`` never suppress each other. ``boxes`` ``(N, 4)`` xyxy, ``scores``
    ``(N,)``, ``labels`` ``(N,)`` integers.

    >>> boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 10, 10], [0, 0, 10, 10]])
    >>> batched_nms(boxes, torch.tensor([0.9, 0.8, 0.7]), torch.tensor([0, 0, 1]), 0.5).tolist()
    [0, 2]
    """
    n = boxes.shape[0]
    if n == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    # Stable sort: equal scores keep their input order.
    order = torch.sort(scores, descending=True, stable=True)[1]
    boxes, labels = boxes[order], labels[order]
    suppressed = torch.zeros(n, dtype=torch.bool, device=boxes.device)
    # One IoU row per kept box (not the N x N matrix): memory stays linear in N.
    for i in range(n - 1):
        if bool(suppressed[i]):
            continue
        overlap = box_iou(boxes[i : i + 1], boxes[i + 1 :])[0] > iou_threshold
        # In place on the view (TorchScript compiles `|=` on a slice to a copy).
        suppressed[i + 1 :].logical_or_(overlap & (labels[i + 1 :] == labels[i]))
    return order[~suppressed]
