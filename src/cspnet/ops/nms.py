"""Class-aware greedy non-maximum suppression, in PyTorch and in NumPy, tested against a brute force.

torchvision (whose ``batched_nms`` is the usual choice) is not a dependency of this project and
cannot be installed next to its pinned torch, so the detectors use these small functions instead.
:func:`batched_nms` is TorchScript-compatible and uses only device-agnostic tensor ops (what
:meth:`Detector.detect <cspnet.models.detectors.Detector.detect>` runs); :func:`greedy_nms` is the
same rule in NumPy, one IoU row per kept box and label (what evaluation runs on thousands of candidates).

The rule (torchvision's, and ONNX ``NonMaxSuppression``'s per class): boxes are xyxy; a box
suppresses a lower-scored box of the *same label* whose IoU with it is strictly greater than
``iou_threshold``; equal scores keep the order of the input (the earlier box wins); the kept indices
come back in decreasing score order.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from cspnet.ops.boxes import box_iou, box_iou_numpy


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


def greedy_nms(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, iou_threshold: float,
               max_keep: int | None = None) -> np.ndarray:  # fmt: skip
    """:func:`batched_nms` in NumPy: the kept indices, highest score first; the first ``max_keep``
    of them when given.

    >>> b = np.array([[0.0, 0, 10, 10], [1, 1, 10, 10], [0, 0, 10, 10]])
    >>> greedy_nms(b, np.array([0.9, 0.8, 0.7]), np.array([0, 0, 1]), 0.5).tolist()
    [0, 2]
    """
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(-scores, kind="stable")
    b, lab = boxes[order], labels[order]
    kept = np.zeros(len(b), dtype=bool)
    # Labels never suppress each other, so each label is its own greedy pass, and a kept box needs its
    # IoU with the later boxes of its label only: linear memory, and far less work than one N x N matrix
    # when candidates are many (evaluation's thousands, or an int8 model's noise).
    for label in np.unique(lab):
        members = np.flatnonzero(lab == label)  # positions in score order
        alive = np.ones(len(members), dtype=bool)
        for k in range(len(members)):
            if not alive[k]:
                continue
            kept[members[k]] = True
            if k + 1 < len(members):
                alive[k + 1 :] &= box_iou_numpy(b[members[k]][None], b[members[k + 1 :]])[0] <= iou_threshold
    keep = np.flatnonzero(kept)  # score order, equal scores in input order
    return order[keep if max_keep is None else keep[:max_keep]]
