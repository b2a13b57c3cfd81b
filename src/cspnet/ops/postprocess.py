"""Post-processing of decoded detections: one rule, its thresholds, a PyTorch and a NumPy implementation.

The rule, per image, on decoded ``boxes`` ``(K, 4)`` xyxy input pixels and ``scores`` ``(K, C)``:

1. candidates: every (box, class) pair with ``score > conf_threshold`` (a box may carry several
   classes, as darknet's); when there are more than ``max_candidates``, the highest-scored of them,
   equal scores in (box, class) order (a stable sort), since NMS costs grow quadratically;
2. each candidate's box clipped to the image (:func:`~cspnet.ops.boxes.clip_boxes`);
3. class-aware greedy NMS (:mod:`cspnet.ops.nms`): a box suppresses a lower-scored box of its class
   whose IoU with it is strictly above ``iou_threshold``; equal scores: the earlier pair wins;
4. the ``max_detections`` best survivors, highest score first.

:func:`postprocess` runs it in PyTorch (scriptable, device-agnostic; what ``Detector.detect`` uses);
:func:`postprocess_numpy` gives the same result with the suppression done on one NumPy IoU matrix
per image (milliseconds where the tensor loop takes most of a second at evaluation's thousands of
candidates). The exported ONNX graph (:mod:`cspnet.detection.export`) builds the same rule from ONNX
operators. Thresholds live in one place, :mod:`cspnet.ops.thresholds` (:data:`PREDICT`, :data:`EVALUATE`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from cspnet.ops.boxes import clip_boxes
from cspnet.ops.nms import batched_nms, greedy_nms
from cspnet.ops.thresholds import EVALUATE, PREDICT, Thresholds

__all__ = ["EVALUATE", "PREDICT", "Thresholds", "postprocess", "postprocess_numpy", "select_candidates"]


def select_candidates(scores: Tensor, conf_threshold: float, max_candidates: int) -> tuple[Tensor, Tensor, Tensor]:
    """Step 1 of the rule for one image's ``scores`` ``(K, C)``: ``(box index, class, score)`` of each candidate.

    >>> s = torch.tensor([[0.9, 0.1], [0.5, 0.5], [0.2, 0.7]])
    >>> [t.tolist() for t in select_candidates(s, 0.3, 4)]          # (box, class) order
    [[0, 1, 1, 2], [0, 0, 1, 1], [0.8999999761581421, 0.5, 0.5, 0.699999988079071]]
    >>> [t.tolist() for t in select_candidates(s, 0.3, 3)]          # the best 3; of equal scores the first
    [[0, 2, 1], [0, 1, 0], [0.8999999761581421, 0.699999988079071, 0.5]]
    """
    pairs = torch.nonzero(scores > conf_threshold)  # (box, class) order
    index, label = pairs[:, 0], pairs[:, 1]
    score = scores[index, label]
    if score.numel() > max_candidates:
        best = torch.sort(score, descending=True, stable=True)[1][:max_candidates]
        index, label, score = index[best], label[best], score[best]
    return index, label, score


def postprocess(
    boxes: Tensor,
    scores: Tensor,
    image_size: list[int],
    conf_threshold: float = PREDICT.conf_threshold,
    iou_threshold: float = PREDICT.iou_threshold,
    max_detections: int = PREDICT.max_detections,
    max_candidates: int = PREDICT.max_candidates,
) -> list[dict[str, Tensor]]:
    """The rule (module docstring) on decoded ``boxes`` ``(N, K, 4)`` and ``scores`` ``(N, K, C)`` of
    images of ``image_size`` ``(height, width)``. Returns per image ``boxes`` (M, 4), ``scores`` (M,),
    ``labels`` (M,), highest score first.

    >>> boxes = torch.tensor([[[-5.0, -5, 20, 20], [0, 0, 20, 20], [100, 100, 120, 120]]])
    >>> scores = torch.tensor([[[0.9, 0.0], [0.8, 0.0], [0.0, 0.6]]])
    >>> r = postprocess(boxes, scores, [64, 110])[0]
    >>> r["boxes"].tolist(), r["labels"].tolist()
    ([[0.0, 0.0, 20.0, 20.0], [100.0, 64.0, 110.0, 64.0]], [0, 1])
    """
    results: list[dict[str, Tensor]] = []
    height, width = float(image_size[0]), float(image_size[1])
    for b in range(boxes.shape[0]):
        index, label, score = select_candidates(scores[b], conf_threshold, max_candidates)
        image_boxes = clip_boxes(boxes[b][index], height, width)
        keep = batched_nms(image_boxes, score, label, iou_threshold)[:max_detections]
        results.append({"boxes": image_boxes[keep], "scores": score[keep], "labels": label[keep]})
    return results


def postprocess_numpy(
    boxes: Tensor,
    scores: Tensor,
    image_size: tuple[int, int] | list[int],
    conf_threshold: float = PREDICT.conf_threshold,
    iou_threshold: float = PREDICT.iou_threshold,
    max_detections: int = PREDICT.max_detections,
    max_candidates: int = PREDICT.max_candidates,
) -> list[dict[str, Tensor]]:
    """:func:`postprocess`'s result (same arguments), with the suppression in NumPy; results on the CPU.

    Candidates and clipping are the same tensor code as :func:`postprocess` (they are cheap); only
    NMS, the costly step, is :func:`~cspnet.ops.nms.greedy_nms`.
    """
    height, width = float(image_size[0]), float(image_size[1])
    results = []
    for b in range(boxes.shape[0]):
        image_scores = scores[b].detach().float().cpu()
        index, label, score = select_candidates(image_scores, conf_threshold, max_candidates)
        image_boxes = clip_boxes(boxes[b].detach().float().cpu()[index], height, width)
        keep = torch.from_numpy(greedy_nms(image_boxes.numpy(), score.numpy(), label.numpy(), iou_threshold, max_detections))
        results.append({"boxes": image_boxes[keep], "scores": score[keep], "labels": label[keep]})
    return results
