"""Box geometry, written once for every detection path (data, loss, inference, evaluation, export).

Boxes are ``(..., 4)`` float tensors in pixels. The canonical format is ``xyxy`` (``x1, y1, x2, y2``,
pixel edges: a box covering a whole ``W x H`` image is ``0, 0, W, H``); :func:`box_convert` turns it
into ``xywh`` (COCO's ``x, y, width, height``) or ``cxcywh`` (centre and size) and back.

The YOLO box coder (:func:`yolo_encode` for the loss's targets, :func:`yolo_decode` for the loss's
GIoU boxes and for inference) is darknet's ``get_yolo_box``, with the size logits bounded before
``exp`` (:data:`MAX_SIZE_LOGIT`) so that no prediction decodes to an infinite box::

    cx = (col + sigmoid(tx)) * stride      w = anchor_w * exp(min(tw, MAX_SIZE_LOGIT))
    cy = (row + sigmoid(ty)) * stride      h = anchor_h * exp(min(th, MAX_SIZE_LOGIT))

Everything here is TorchScript-compatible (the scripted detector decodes and post-processes with
it); the few NumPy twins (:func:`box_iou_numpy`) follow the same formulas, in the same order, for
the fast evaluation path, and are tested equal to the tensor versions.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

BOX_FORMATS: tuple[str, ...] = ("xyxy", "xywh", "cxcywh")
"""The box formats :func:`box_convert` knows (torchvision's names)."""

MAX_SIZE_LOGIT = math.log(1000.0 / 16)
"""The largest size logit ``tw``/``th`` that :func:`yolo_decode` exponentiates (about 4.135).

torchvision's ``BoxCoder`` and mmdetection's delta coder bound their size deltas at this value
(``bbox_xform_clip = log(1000 / 16)``): a box may grow to 62.5 times its anchor, wider than any
input this library accepts (4096 px) for every anchor of 66 px and more. Without a bound an
untrained detector (whose raw outputs reach thousands) or one briefly trained decodes ``exp`` to
infinity, and ``inf - inf`` to NaN boxes. The loss's offset targets ``log(w / anchor_w)`` stay far
below it, so training on them is unchanged; the GIoU/CIoU loss gets no size gradient from a
prediction above the bound (it is 62 times too large, and objectness and the centre still learn).
"""


def box_convert(boxes: Tensor, in_fmt: str, out_fmt: str) -> Tensor:
    """``boxes`` ``(..., 4)`` from ``in_fmt`` to ``out_fmt`` (each one of :data:`BOX_FORMATS`).

    >>> box_convert(torch.tensor([[10.0, 20, 30, 60]]), "xyxy", "xywh").tolist()
    [[10.0, 20.0, 20.0, 40.0]]
    >>> box_convert(torch.tensor([[10.0, 20, 30, 60]]), "xyxy", "cxcywh").tolist()
    [[20.0, 40.0, 20.0, 40.0]]
    >>> box_convert(torch.tensor([[20.0, 40, 20, 40]]), "cxcywh", "xyxy").tolist()
    [[10.0, 20.0, 30.0, 60.0]]
    """
    for fmt in (in_fmt, out_fmt):
        if fmt not in ("xyxy", "xywh", "cxcywh"):
            raise ValueError("box format " + fmt + " is invalid: expected xyxy, xywh or cxcywh")
    if in_fmt == out_fmt:
        return boxes
    first, second = boxes[..., :2], boxes[..., 2:]
    if in_fmt == "xywh":
        xyxy = torch.cat([first, first + second], -1)
    elif in_fmt == "cxcywh":
        xyxy = torch.cat([first - second / 2, first + second / 2], -1)
    else:
        xyxy = boxes
    top_left, bottom_right = xyxy[..., :2], xyxy[..., 2:]
    if out_fmt == "xywh":
        return torch.cat([top_left, bottom_right - top_left], -1)
    if out_fmt == "cxcywh":
        return torch.cat([(top_left + bottom_right) / 2, bottom_right - top_left], -1)
    return xyxy


def clip_boxes(boxes: Tensor, height: float, width: float) -> Tensor:
    """xyxy ``boxes`` ``(..., 4)`` clipped to a ``width x height`` image (``0 <= x <= width``, ``0 <= y <= height``).

    NaN coordinates stay NaN (callers that must reject them check for them).

    >>> clip_boxes(torch.tensor([[-5.0, 2, 120, 70]]), 64, 100).tolist()
    [[0.0, 2.0, 100.0, 64.0]]
    """
    limits = torch.tensor([width, height, width, height], dtype=boxes.dtype, device=boxes.device)
    return torch.minimum(boxes.clamp(min=0), limits)


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


def box_iou_numpy(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """:func:`box_iou` in NumPy (same formula, same order of operations, so float32 gives the same bits).

    >>> box_iou_numpy(np.array([[0.0, 0, 2, 2]]), np.array([[1.0, 1, 3, 3]])).round(6).tolist()
    [[0.142857]]
    """
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(bottom_right - top_left, 0, None)
    inter = wh[..., 0] * wh[..., 1]

    def area(x: np.ndarray) -> np.ndarray:
        return np.clip(x[:, 2] - x[:, 0], 0, None) * np.clip(x[:, 3] - x[:, 1], 0, None)

    union = area(a)[:, None] + area(b)[None, :] - inter
    nonempty = union > 0
    return np.where(nonempty, inter / np.where(nonempty, union, 1), 0).astype(inter.dtype, copy=False)


def generalized_iou(a: Tensor, b: Tensor, kind: str = "giou", eps: float = 1e-7) -> Tensor:
    """Element-wise GIoU (or CIoU, ``kind="ciou"``) of xyxy boxes ``a`` and ``b`` ``(P, 4)``.

    >>> generalized_iou(torch.tensor([[0.0, 0, 2, 2]]), torch.tensor([[0.0, 0, 2, 2]])).tolist()
    [1.0]
    >>> round(float(generalized_iou(torch.tensor([[0.0, 0, 1, 1]]), torch.tensor([[2.0, 0, 3, 1]]))), 4)
    -0.3333
    """
    inter_wh = (torch.minimum(a[:, 2:], b[:, 2:]) - torch.maximum(a[:, :2], b[:, :2])).clamp(min=0)
    inter = inter_wh.prod(1)
    wh_a, wh_b = (a[:, 2:] - a[:, :2]).clamp(min=0), (b[:, 2:] - b[:, :2]).clamp(min=0)
    union = wh_a.prod(1) + wh_b.prod(1) - inter + eps
    iou = inter / union
    hull_wh = torch.maximum(a[:, 2:], b[:, 2:]) - torch.minimum(a[:, :2], b[:, :2])
    if kind == "giou":
        hull = hull_wh.prod(1) + eps
        return iou - (hull - union) / hull
    # CIoU: centre distance over the hull's diagonal, and the aspect-ratio consistency term.
    diagonal = hull_wh.pow(2).sum(1) + eps
    centre = ((a[:, :2] + a[:, 2:]) - (b[:, :2] + b[:, 2:])).pow(2).sum(1) / 4
    v = (4 / math.pi**2) * (torch.atan(wh_b[:, 0] / (wh_b[:, 1] + eps)) - torch.atan(wh_a[:, 0] / (wh_a[:, 1] + eps))).pow(2)
    with torch.no_grad():
        alpha = v / (1 - iou + v + eps)
    return iou - centre / diagonal - alpha * v


def yolo_decode(pred: Tensor, cell: Tensor, stride: Tensor, anchor: Tensor, max_size_logit: float = MAX_SIZE_LOGIT) -> Tensor:
    """Raw ``tx, ty, tw, th`` ``(..., 4)`` -> xyxy boxes ``(..., 4)`` in input pixels (see the module docstring).

    ``cell`` ``(..., 2)`` is the grid cell's ``(col, row)``, ``stride`` its scale's stride and
    ``anchor`` ``(..., 2)`` the anchor's ``(w, h)`` in input pixels; all broadcast against ``pred``.
    ``max_size_logit`` is :data:`MAX_SIZE_LOGIT` (an argument so that TorchScript sees a constant).

    >>> yolo_decode(torch.zeros(1, 4), torch.tensor([[2.0, 1.0]]), torch.tensor(16.0), torch.tensor([[30.0, 40.0]])).tolist()
    [[25.0, 4.0, 55.0, 44.0]]
    >>> bool(torch.isfinite(yolo_decode(torch.full((1, 4), 1e4), torch.zeros(1, 2), torch.tensor(8.0), torch.ones(1, 2))).all())
    True
    """
    centre = (cell + pred[..., 0:2].sigmoid()) * stride
    size = pred[..., 2:4].clamp(max=max_size_logit).exp() * anchor
    return torch.cat([centre - size / 2, centre + size / 2], -1)


def yolo_encode(boxes: Tensor, cell: Tensor, stride: Tensor, anchor: Tensor) -> Tensor:
    """xyxy ``boxes`` ``(..., 4)`` -> the targets :func:`yolo_decode` inverts: the centre's offset in
    its ``cell`` (what ``sigmoid(tx), sigmoid(ty)`` should be) and ``log(w / anchor_w), log(h / anchor_h)``.

    Sides are floored at 1e-6 px (a degenerate box has no logarithm).

    >>> t = yolo_encode(torch.tensor([[25.0, 4, 55, 44]]), torch.tensor([[2.0, 1.0]]), torch.tensor(16.0), torch.tensor([[30.0, 40.0]]))
    >>> t.tolist()
    [[0.5, 0.5, 0.0, 0.0]]
    """
    centre_size = box_convert(boxes, "xyxy", "cxcywh")
    offset = centre_size[..., 0:2] / stride - cell
    return torch.cat([offset, torch.log(centre_size[..., 2:4].clamp(min=1e-6) / anchor)], -1)
