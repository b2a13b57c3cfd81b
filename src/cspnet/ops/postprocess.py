"""Post-processing for evaluation and prediction, where thousands of low-score candidates meet NMS.

:func:`cspnet.detection.postprocess` suppresses with one tensor IoU row per kept box (linear memory,
scriptable, what the exported model mirrors); at COCO's evaluation threshold (``conf 0.001``) an
untrained detector hands it thousands of candidates per image, which takes most of a second each.
:func:`detections` gives the same result (same candidates, clipping and suppression rule: class-aware,
IoU strictly above the threshold, the earlier of equal scores wins) from one IoU matrix per image
in NumPy, milliseconds per image.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def greedy_nms(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, iou_threshold: float,
               max_keep: int | None = None) -> np.ndarray:  # fmt: skip
    """Indices kept by class-aware greedy NMS, highest score first (torchvision's rule); the first
    ``max_keep`` of them when given (the rest need not be computed).

    >>> b = np.array([[0.0, 0, 10, 10], [1, 1, 10, 10], [0, 0, 10, 10]])
    >>> greedy_nms(b, np.array([0.9, 0.8, 0.7]), np.array([0, 0, 1]), 0.5).tolist()
    [0, 2]
    """
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(-scores, kind="stable")
    b, lab = boxes[order], labels[order]
    area = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    wh = np.clip(np.minimum(b[:, None, 2:], b[None, :, 2:]) - np.maximum(b[:, None, :2], b[None, :, :2]), 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = area[:, None] + area[None, :] - inter
    iou = np.where(union > 0, inter / np.where(union > 0, union, 1), 0)
    overlaps = (iou > iou_threshold) & (lab[:, None] == lab[None, :])
    suppressed = np.zeros(len(b), dtype=bool)
    keep = []
    for i in range(len(b)):
        if suppressed[i]:
            continue
        keep.append(i)
        if max_keep is not None and len(keep) >= max_keep:
            break
        suppressed |= overlaps[i]
    return order[np.asarray(keep, dtype=np.int64)]


def detections(boxes: Tensor, scores: Tensor, image_size: tuple[int, int], conf_threshold: float = 0.25,
               iou_threshold: float = 0.45, max_detections: int = 300, max_candidates: int = 3000
               ) -> list[dict[str, Tensor]]:  # fmt: skip
    """:func:`cspnet.detection.postprocess`'s result (decoded ``boxes`` (N, K, 4), ``scores`` (N, K, C)), faster."""
    height, width = float(image_size[0]), float(image_size[1])
    results = []
    for b in range(boxes.shape[0]):
        image_scores = scores[b].detach().float().cpu()
        idx, labels = torch.nonzero(image_scores > conf_threshold, as_tuple=True)
        kept = image_scores[idx, labels]
        if kept.numel() > max_candidates:
            top = torch.topk(kept, max_candidates)[1]
            idx, labels, kept = idx[top], labels[top], kept[top]
        image_boxes = boxes[b].detach().float().cpu()[idx]
        limits = torch.tensor([width, height, width, height])
        image_boxes = torch.minimum(image_boxes.clamp(min=0), limits)
        keep = greedy_nms(image_boxes.numpy(), kept.numpy(), labels.numpy(), iou_threshold, max_detections)
        keep_t = torch.from_numpy(keep)
        results.append({"boxes": image_boxes[keep_t], "scores": kept[keep_t], "labels": labels[keep_t]})
    return results
