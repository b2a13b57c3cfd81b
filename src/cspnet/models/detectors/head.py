"""YOLOv3's anchor-based head, its box decoding and the post-processing to per-image detections.

Each output scale has a 3x3 conv (``2w``) and a 1x1 prediction conv with bias (darknet's
``[convolutional] filters=A*(5+C) activation=linear`` before ``[yolo]``). The prediction map holds,
for each of the scale's ``A`` anchors, the planes ``tx, ty, tw, th, objectness, class_0 ...`` (darknet's
layout). Decoding (darknet's ``get_yolo_box``)::

    cx = (col + sigmoid(tx)) * stride      w = anchor_w * exp(tw)      (input pixels)
    cy = (row + sigmoid(ty)) * stride      h = anchor_h * exp(th)
    score(class c) = sigmoid(objectness) * sigmoid(class_c)
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from cspnet.layers import ConvNormAct
from cspnet.ops.nms import batched_nms


class YoloHead(nn.Module):
    """One 3x3 conv + 1x1 prediction conv per scale; returns the raw prediction maps.

    >>> head = YoloHead((16, 32), num_classes=2, anchors_per_scale=3)
    >>> [tuple(o.shape) for o in head([torch.randn(1, 16, 8, 8), torch.randn(1, 32, 4, 4)])]
    [(1, 21, 8, 8), (1, 21, 4, 4)]
    """

    def __init__(
        self, in_chs: tuple[int, ...], num_classes: int, anchors_per_scale: int, act: str = "leaky", drop_rate: float = 0.0
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.anchors_per_scale = anchors_per_scale
        outputs = anchors_per_scale * (5 + num_classes)
        self.levels = nn.ModuleList(
            nn.Sequential(
                ConvNormAct(chs, 2 * chs, 3, act=act),
                nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity(),
                nn.Conv2d(2 * chs, outputs, 1, bias=True),
            )
            for chs in in_chs
        )

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        return [level(features[i]) for i, level in enumerate(self.levels)]


def decode(
    outputs: list[Tensor], anchors: Tensor, strides: list[int], num_classes: int
) -> tuple[Tensor, Tensor]:
    """Raw head maps -> ``(boxes (N, K, 4) xyxy in input pixels, scores (N, K, num_classes))``.

    ``anchors`` is ``(scales, A, 2)`` (w, h in pixels); ``K`` = sum over scales of ``A * H * W``, in
    scale, anchor, row, column order.
    """
    all_boxes: list[Tensor] = []
    all_scores: list[Tensor] = []
    for i, out in enumerate(outputs):
        n, _, h, w = out.shape
        a = anchors.shape[1]
        pred = out.reshape(n, a, 5 + num_classes, h, w).permute(0, 1, 3, 4, 2).float()
        rows = torch.arange(h, device=out.device, dtype=pred.dtype).view(1, 1, h, 1)
        cols = torch.arange(w, device=out.device, dtype=pred.dtype).view(1, 1, 1, w)
        stride = float(strides[i])
        cx = (cols + pred[..., 0].sigmoid()) * stride
        cy = (rows + pred[..., 1].sigmoid()) * stride
        anchor = anchors[i].to(pred).view(1, a, 1, 1, 2)
        wh = pred[..., 2:4].exp() * anchor
        boxes = torch.stack([cx - wh[..., 0] / 2, cy - wh[..., 1] / 2, cx + wh[..., 0] / 2, cy + wh[..., 1] / 2], -1)
        scores = pred[..., 4:5].sigmoid() * pred[..., 5:].sigmoid()
        all_boxes.append(boxes.reshape(n, -1, 4))
        all_scores.append(scores.reshape(n, -1, num_classes))
    return torch.cat(all_boxes, 1), torch.cat(all_scores, 1)


def postprocess(
    boxes: Tensor,
    scores: Tensor,
    image_size: list[int],
    conf_threshold: float = 0.25,
    iou_threshold: float = 0.45,
    max_detections: int = 300,
    max_candidates: int = 3000,
) -> list[dict[str, Tensor]]:
    """Per image: every (box, class) with ``score > conf_threshold`` (a box may carry several
    classes, as darknet's), clipped to ``image_size`` ``(height, width)``, class-aware NMS, the best
    ``max_detections``. Returns dicts of ``boxes`` (M, 4), ``scores`` (M,), ``labels`` (M,).

    ``max_candidates`` bounds the boxes entering NMS (the highest-scored ones), whose cost is quadratic.
    """
    results: list[dict[str, Tensor]] = []
    height, width = float(image_size[0]), float(image_size[1])
    for b in range(boxes.shape[0]):
        image_scores = scores[b]
        pairs = torch.nonzero(image_scores > conf_threshold)
        idx, labels = pairs[:, 0], pairs[:, 1]
        kept_scores = image_scores[idx, labels]
        if kept_scores.numel() > max_candidates:
            top = torch.topk(kept_scores, max_candidates)[1]
            idx, labels, kept_scores = idx[top], labels[top], kept_scores[top]
        image_boxes = boxes[b][idx]
        image_boxes = torch.stack(
            [
                image_boxes[:, 0].clamp(0.0, width),
                image_boxes[:, 1].clamp(0.0, height),
                image_boxes[:, 2].clamp(0.0, width),
                image_boxes[:, 3].clamp(0.0, height),
            ],
            dim=1,
        )
        keep = batched_nms(image_boxes, kept_scores, labels, iou_threshold)[:max_detections]
        results.append({"boxes": image_boxes[keep], "scores": kept_scores[keep], "labels": labels[keep]})
    return results
