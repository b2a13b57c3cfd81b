"""YOLOv3's target assignment and losses, on the raw maps of :class:`~cspnet.detection.YoloHead`.

Assignment (YOLOv3, darknet's ``forward_yolo_layer``): each ground-truth box goes to the one anchor,
over all scales, whose shape fits it best (IoU of the two boxes centred on each other), at the cell
of that scale holding its centre. That prediction learns the box, objectness 1 and its class. With ``anchor_threshold`` (YOLOv4's
``iou_thresh``; off by default and at 1) every other anchor whose shape IoU with the box exceeds it is a
positive too, at its own scale's cell: more positives per step, faster learning on small data. Every
other prediction learns objectness 0, except those whose decoded box already overlaps some
ground-truth box of its image by more than ``ignore_threshold`` IoU: they are left alone (not
pushed down for a good guess). Two boxes claiming the same cell and anchor: the later one wins.

Losses, summed over each image and averaged over the batch (darknet's scale):

* box, ``box_loss="offsets"`` (YOLOv3): squared error of ``sigmoid(tx), sigmoid(ty)`` to the
  centre's offset in its cell and of ``tw, th`` to ``log(w / anchor_w), log(h / anchor_h)``
  (:func:`cspnet.ops.boxes.yolo_encode`), weighted ``2 - w h / (W H)`` so small boxes count more;
  ``"giou"`` / ``"ciou"``: ``1 - GIoU`` (or ``1 - CIoU``) of the box decoded as inference decodes
  it (:func:`cspnet.ops.boxes.yolo_decode`) with the ground truth (the paper's Table 2 ablation);
* objectness: binary cross-entropy, over every prediction not ignored;
* classes: binary cross-entropy per class (one-hot), at the assigned predictions.

A perfect prediction has a loss of about zero:

>>> import torch
>>> loss = YoloLoss(torch.tensor([[[4.0, 4.0]]]), strides=[8], num_classes=2)
>>> target = torch.tensor([[0, 1, 10.0, 10.0, 14.0, 14.0]])   # image 0, class 1, a 4x4 box centred at (12, 12)
>>> raw = torch.full((1, 7, 2, 2), -30.0); raw[0, 0:2, 1, 1] = 0.0; raw[0, 2:4, 1, 1] = 0.0
>>> raw[0, 4, 1, 1] = 30.0; raw[0, 6, 1, 1] = 30.0
>>> round(float(loss([raw], target, (16, 16))[0]), 6)
0.0
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cspnet.ops.boxes import box_area, box_convert, box_iou, generalized_iou, yolo_decode, yolo_encode

BOX_LOSSES = ("offsets", "giou", "ciou")


@dataclass
class Assignment:
    """The positive predictions: one row per kept ground-truth box."""

    scale: Tensor  # (P,) which output scale
    image: Tensor  # (P,) batch index
    anchor: Tensor  # (P,) anchor within the scale
    row: Tensor  # (P,)
    col: Tensor  # (P,)
    offsets: Tensor  # (P, 4) targets of tx (after sigmoid), ty (after sigmoid), tw, th
    boxes: Tensor  # (P, 4) the ground-truth boxes, xyxy input pixels
    labels: Tensor  # (P,)


def shape_iou(wh: Tensor, anchors: Tensor) -> Tensor:
    """IoU of boxes ``(G, 2)`` with anchors ``(K, 2)``, both centred on the origin: ``(G, K)``.

    >>> shape_iou(torch.tensor([[4.0, 4.0]]), torch.tensor([[2.0, 2.0], [4.0, 4.0], [8.0, 2.0]])).tolist()[0][:2]
    [0.25, 1.0]
    """

    def centred(sizes: Tensor) -> Tensor:
        return box_convert(torch.cat([torch.zeros_like(sizes), sizes], 1), "cxcywh", "xyxy")

    return box_iou(centred(wh), centred(anchors))


class YoloLoss(nn.Module):
    """``loss(outputs, targets, input_size) -> (total, {"box", "obj", "cls"})`` for one batch.

    ``anchors`` ``(scales, A, 2)`` in input pixels and ``strides`` as the detector has them
    (``detector.get_buffer("anchors")``, ``detector.strides``); ``targets`` ``(M, 6)`` rows
    ``image index, label, x1, y1, x2, y2`` in input pixels; ``input_size`` ``(height, width)``.
    """

    def __init__(self, anchors: Tensor, strides: list[int], num_classes: int, box_loss: str = "offsets",
                 ignore_threshold: float = 0.5, box_weight: float = 1.0, obj_weight: float = 1.0,
                 cls_weight: float = 1.0, anchor_threshold: float | None = None) -> None:  # fmt: skip
        super().__init__()
        if box_loss not in BOX_LOSSES:
            raise ValueError(f"box_loss={box_loss!r} is invalid: expected one of {', '.join(BOX_LOSSES)}")
        self.register_buffer("anchors", anchors.detach().float().clone(), persistent=False)
        self.strides, self.num_classes, self.box_loss = list(strides), num_classes, box_loss
        self.ignore_threshold, self.anchor_threshold = ignore_threshold, anchor_threshold
        self.box_weight, self.obj_weight, self.cls_weight = box_weight, obj_weight, cls_weight

    def assign(self, targets: Tensor, grids: list[tuple[int, int]]) -> Assignment:
        """The prediction each ground-truth box trains (see the module docstring)."""
        anchors = self.get_buffer("anchors")
        per_scale = anchors.shape[1]
        boxes = targets[:, 2:6].float()
        centre_size = box_convert(boxes, "xyxy", "cxcywh")
        fit = shape_iou(centre_size[:, 2:].clamp(min=1e-6), anchors.reshape(-1, 2))
        chosen = torch.zeros_like(fit, dtype=torch.bool)
        chosen[torch.arange(len(fit), device=fit.device), fit.argmax(1)] = True
        if self.anchor_threshold is not None and self.anchor_threshold < 1:  # YOLOv4's iou_thresh
            chosen |= fit > self.anchor_threshold
        box_index, best = torch.nonzero(chosen, as_tuple=True)
        boxes, centre, targets = boxes[box_index], centre_size[box_index, :2], targets[box_index]
        scale, anchor = best // per_scale, best % per_scale
        stride = torch.tensor(self.strides, dtype=boxes.dtype, device=boxes.device)[scale]
        grid_h = torch.tensor([g[0] for g in grids], device=boxes.device)[scale]
        grid_w = torch.tensor([g[1] for g in grids], device=boxes.device)[scale]
        cell = centre / stride[:, None]
        col = cell[:, 0].floor().long().clamp(min=0).minimum(grid_w - 1)
        row = cell[:, 1].floor().long().clamp(min=0).minimum(grid_h - 1)
        offsets = yolo_encode(boxes, torch.stack([col, row], 1).to(cell), stride[:, None], anchors[scale, anchor])
        image = targets[:, 0].long()
        # The later of two boxes claiming one prediction wins (darknet overwrites in order).
        key = (((scale * per_scale + anchor) * targets.shape[0] + image) * 4096 + row) * 4096 + col
        unique, inverse = torch.unique(key, return_inverse=True)
        order = torch.arange(len(key), device=key.device)
        last = torch.full((len(unique),), -1, dtype=torch.long, device=key.device).scatter_reduce(0, inverse, order, "amax")
        return Assignment(scale[last], image[last], anchor[last], row[last], col[last], offsets[last], boxes[last],
                          targets[last, 1].long())  # fmt: skip

    def forward(self, outputs: list[Tensor], targets: Tensor, input_size: tuple[int, int]) -> tuple[Tensor, dict[str, Tensor]]:
        from cspnet.models.detectors.head import decode

        anchors = self.get_buffer("anchors")
        batch, a, c = outputs[0].shape[0], anchors.shape[1], self.num_classes
        maps = [o.float().reshape(o.shape[0], a, 5 + c, o.shape[-2], o.shape[-1]).permute(0, 1, 3, 4, 2) for o in outputs]
        grids = [(m.shape[2], m.shape[3]) for m in maps]
        targets = targets.to(outputs[0].device).float()
        found = self.assign(targets, grids)
        height, width = input_size

        # Objectness targets and the ignore mask, per scale.
        with torch.no_grad():
            decoded, _ = decode([o.detach() for o in outputs], anchors, self.strides, c)  # (N, K, 4)
            ignore = self._ignored(decoded, targets, batch)
        obj_loss = outputs[0].new_zeros((), dtype=torch.float32)
        start = 0
        picked: list[Tensor] = []
        for s, m in enumerate(maps):
            count = a * grids[s][0] * grids[s][1]
            obj_target = torch.zeros(m.shape[:4], device=m.device)
            weight = (~ignore[:, start : start + count]).reshape(m.shape[:4]).float()
            start += count
            here = found.scale == s
            index = (found.image[here], found.anchor[here], found.row[here], found.col[here])
            obj_target[index] = 1.0
            weight[index] = 1.0
            obj_loss = obj_loss + (F.binary_cross_entropy_with_logits(m[..., 4], obj_target, reduction="none") * weight).sum()
            picked.append(m[index])
        positives = torch.cat(picked) if picked else maps[0].new_zeros(0, 5 + c)
        order = torch.cat([torch.nonzero(found.scale == s).flatten() for s in range(len(maps))])
        truth_offsets, truth_boxes, labels = found.offsets[order], found.boxes[order], found.labels[order]

        if positives.shape[0]:
            if self.box_loss == "offsets":
                area = box_area(truth_boxes) / (height * width)
                squared = (positives[:, 0:2].sigmoid() - truth_offsets[:, 0:2]).pow(2).sum(1) + (
                    positives[:, 2:4] - truth_offsets[:, 2:4]
                ).pow(2).sum(1)
                box_loss = ((2 - area) * squared).sum()
            else:
                pred = self._decode_positives(positives, found, order)
                box_loss = (1 - generalized_iou(pred, truth_boxes, self.box_loss)).sum()
            one_hot = F.one_hot(labels, c).float()
            cls_loss = F.binary_cross_entropy_with_logits(positives[:, 5:], one_hot, reduction="sum")
        else:
            box_loss = cls_loss = positives.sum()  # zero, on the graph
        parts = {"box": box_loss / batch, "obj": obj_loss / batch, "cls": cls_loss / batch}
        total = self.box_weight * parts["box"] + self.obj_weight * parts["obj"] + self.cls_weight * parts["cls"]
        return total, {k: v.detach() for k, v in parts.items()}

    def _ignored(self, decoded: Tensor, targets: Tensor, batch: int) -> Tensor:
        """``(N, K)``: predictions whose box overlaps a ground-truth box of their image above the threshold."""
        ignore = torch.zeros(decoded.shape[:2], dtype=torch.bool, device=decoded.device)
        for b in range(batch):
            truth = targets[targets[:, 0] == b, 2:6]
            if len(truth):
                ignore[b] = box_iou(decoded[b], truth).amax(1) > self.ignore_threshold
        return ignore

    def _decode_positives(self, positives: Tensor, found: Assignment, order: Tensor) -> Tensor:
        anchors = self.get_buffer("anchors")
        scale = found.scale[order]
        stride = torch.tensor(self.strides, dtype=positives.dtype, device=positives.device)[scale]
        cell = torch.stack([found.col[order], found.row[order]], 1).to(positives)
        return yolo_decode(positives[:, 0:4], cell, stride[:, None], anchors[scale, found.anchor[order]])
