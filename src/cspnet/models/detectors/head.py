"""YOLOv3's anchor-based head and the decoding of its maps into boxes and class scores.

Each output scale has a 3x3 conv (``2w``) and a 1x1 prediction conv with bias (darknet's
``[convolutional] filters=A*(5+C) activation=linear`` before ``[yolo]``). The prediction map holds,
for each of the scale's ``A`` anchors, the planes ``tx, ty, tw, th, objectness, class_0 ...`` (darknet's
layout). Boxes decode with :func:`cspnet.ops.boxes.yolo_decode` (darknet's ``get_yolo_box``, the
size logits bounded); ``score(class c) = sigmoid(objectness) * sigmoid(class_c)``. Post-processing
to per-image detections is :func:`cspnet.ops.postprocess.postprocess`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from cspnet.layers import ConvNormAct
from cspnet.ops.boxes import yolo_decode


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
    scale, anchor, row, column order. Boxes come from :func:`cspnet.ops.boxes.yolo_decode` (finite
    for any finite output: the size logits are bounded).
    """
    all_boxes: list[Tensor] = []
    all_scores: list[Tensor] = []
    for i, out in enumerate(outputs):
        n, _, h, w = out.shape
        a = anchors.shape[1]
        pred = out.reshape(n, a, 5 + num_classes, h, w).permute(0, 1, 3, 4, 2).float()
        rows = torch.arange(h, device=out.device, dtype=pred.dtype).view(h, 1).expand(h, w)
        cols = torch.arange(w, device=out.device, dtype=pred.dtype).view(1, w).expand(h, w)
        cell = torch.stack([cols, rows], -1).view(1, 1, h, w, 2)
        stride = torch.full((), float(strides[i]), dtype=pred.dtype, device=out.device)
        anchor = anchors[i].to(pred).view(1, a, 1, 1, 2)
        boxes = yolo_decode(pred[..., 0:4], cell, stride, anchor)
        scores = pred[..., 4:5].sigmoid() * pred[..., 5:].sigmoid()
        all_boxes.append(boxes.reshape(n, -1, 4))
        all_scores.append(scores.reshape(n, -1, num_classes))
    return torch.cat(all_boxes, 1), torch.cat(all_scores, 1)
