"""YOLOv3 target assignment and loss on hand-made cases."""

from __future__ import annotations

import math

import pytest
import torch

from cspnet.detection.loss import YoloLoss
from cspnet.ops.boxes import generalized_iou

# Two scales (strides 8 and 16), two anchors each: small ones at stride 8, large at stride 16.
ANCHORS = torch.tensor([[[6.0, 6.0], [12.0, 6.0]], [[20.0, 20.0], [40.0, 30.0]]])
STRIDES = [8, 16]
SIZE = (64, 64)
C = 3


def maps(batch: int = 1, fill: float = -30.0) -> list[torch.Tensor]:
    return [torch.full((batch, 2 * (5 + C), 64 // s, 64 // s), fill, requires_grad=False) for s in STRIDES]


def perfect(targets: torch.Tensor, batch: int = 1) -> list[torch.Tensor]:
    """Raw maps that predict exactly the assigned boxes, objectness 1 there and 0 elsewhere."""
    loss = YoloLoss(ANCHORS, STRIDES, C)
    out = maps(batch)
    found = loss.assign(targets, [(8, 8), (4, 4)])
    for i in range(len(found.image)):
        m = out[int(found.scale[i])]
        a, b, r, c = int(found.anchor[i]), int(found.image[i]), int(found.row[i]), int(found.col[i])
        base = a * (5 + C)
        ox, oy, tw, th = found.offsets[i].tolist()
        m[b, base + 0, r, c] = math.log(ox / (1 - ox))
        m[b, base + 1, r, c] = math.log(oy / (1 - oy))
        m[b, base + 2, r, c], m[b, base + 3, r, c] = tw, th
        m[b, base + 4, r, c] = 30.0
        m[b, base + 5 + int(found.labels[i]), r, c] = 30.0
    return out


def test_one_box_goes_to_exactly_one_cell_and_anchor():
    loss = YoloLoss(ANCHORS, STRIDES, C)
    # a 12 x 6 box centred at (20, 29): best anchor is scale 0, anchor 1; cell col 20 // 8 = 2, row 29 // 8 = 3
    found = loss.assign(torch.tensor([[0, 2, 14.0, 26.0, 26.0, 32.0]]), [(8, 8), (4, 4)])
    assert (found.scale.tolist(), found.anchor.tolist(), found.row.tolist(), found.col.tolist()) == ([0], [1], [3], [2])
    torch.testing.assert_close(found.offsets, torch.tensor([[0.5, 0.625, 0.0, 0.0]]))
    # a 40 x 30 box goes to the coarse scale's large anchor, centre (49, 40) -> cell (3, 2)
    found = loss.assign(torch.tensor([[0, 0, 29.0, 25.0, 69.0, 55.0]]), [(8, 8), (4, 4)])
    assert (found.scale.tolist(), found.anchor.tolist(), found.row.tolist(), found.col.tolist()) == ([1], [1], [2], [3])


def test_two_boxes_claiming_one_prediction_keep_the_later():
    loss = YoloLoss(ANCHORS, STRIDES, C)
    targets = torch.tensor([[0, 0, 17.0, 17.0, 23.0, 23.0], [0, 1, 18.0, 18.0, 24.0, 24.0], [1, 2, 17.0, 17.0, 23.0, 23.0]])
    found = loss.assign(targets, [(8, 8), (4, 4)])
    assert sorted(zip(found.image.tolist(), found.labels.tolist())) == [(0, 1), (1, 2)]


@pytest.mark.parametrize("box_loss", ["offsets", "giou", "ciou"])
def test_a_perfect_prediction_has_zero_loss(box_loss):
    targets = torch.tensor([[0, 2, 14.0, 26.0, 26.0, 32.0], [0, 0, 29.0, 25.0, 69.0, 55.0], [1, 1, 2.0, 3.0, 9.0, 8.0]])
    total, parts = YoloLoss(ANCHORS, STRIDES, C, box_loss=box_loss)(perfect(targets, 2), targets, SIZE)
    assert float(total) < 1e-5, parts


def test_each_part_grows_when_its_prediction_is_wrong():
    targets = torch.tensor([[0, 2, 14.0, 26.0, 26.0, 32.0]])
    loss = YoloLoss(ANCHORS, STRIDES, C)
    good = perfect(targets)
    base = float(loss(good, targets, SIZE)[0])
    wrong_box = [m.clone() for m in good]
    wrong_box[0][0, 8 + 2, 3, 2] = 1.0  # tw of anchor 1 at the assigned cell
    assert loss(wrong_box, targets, SIZE)[1]["box"] > 0.5
    wrong_cls = [m.clone() for m in good]
    wrong_cls[0][0, 8 + 5 + 0, 3, 2] = 30.0  # class 0 also fires
    assert loss(wrong_cls, targets, SIZE)[1]["cls"] > 20
    wrong_obj = [m.clone() for m in good]
    wrong_obj[1][0, 4, 0, 0] = 30.0  # a confident detection where nothing is
    assert loss(wrong_obj, targets, SIZE)[1]["obj"] > 20 > base


def test_predictions_overlapping_a_box_are_ignored_not_pushed_down():
    """A confident prediction of a box overlapping the ground truth above 0.5 IoU costs no objectness loss."""
    targets = torch.tensor([[0, 2, 14.0, 26.0, 26.0, 32.0]])
    loss = YoloLoss(ANCHORS, STRIDES, C, ignore_threshold=0.5)
    good = perfect(targets)
    overlapping = [m.clone() for m in good]
    # anchor 1 (12 x 6) of the neighbouring cell (row 3, col 1): sigmoid(tx) ~ 1 puts its centre at x = 16,
    # the box 10..22 against the truth's 14..26 (same rows): IoU 48 / 96 = 0.5
    overlapping[0][0, 8 + 0, 3, 1] = 20.0
    overlapping[0][0, 8 + 1, 3, 1] = math.log(0.625 / 0.375)
    overlapping[0][0, 8 + 2, 3, 1] = overlapping[0][0, 8 + 3, 3, 1] = 0.0
    overlapping[0][0, 8 + 4, 3, 1] = 30.0
    cost = float(loss(overlapping, targets, SIZE)[1]["obj"])
    assert cost > 20  # IoU exactly 0.5 is not above the threshold
    lenient = YoloLoss(ANCHORS, STRIDES, C, ignore_threshold=0.4)
    assert float(lenient(overlapping, targets, SIZE)[1]["obj"]) < 1e-5


def test_an_image_without_boxes_only_learns_background():
    total, parts = YoloLoss(ANCHORS, STRIDES, C)(maps(2), torch.zeros(0, 6), SIZE)
    assert float(parts["box"]) == float(parts["cls"]) == 0.0 and float(total) < 1e-9
    raw = maps(1, fill=0.0)
    raw[0].requires_grad_(True)
    total, _ = YoloLoss(ANCHORS, STRIDES, C)(raw, torch.zeros(0, 6), SIZE)
    total.backward()
    assert raw[0].grad is not None and float(raw[0].grad[0, 4].sum()) > 0  # objectness pushed down


def test_giou_and_ciou_of_known_boxes():
    a, b = torch.tensor([[0.0, 0, 2, 2]]), torch.tensor([[1.0, 0, 3, 2]])
    assert float(generalized_iou(a, b)) == pytest.approx(1 / 3, abs=1e-5)  # hull = union here
    # CIoU: IoU 1/3 minus centre distance 1 over diagonal^2 (9 + 4 = 13); same aspect, no v term
    assert float(generalized_iou(a, b, "ciou")) == pytest.approx(1 / 3 - 1 / 13, abs=1e-5)


def test_an_anchor_threshold_adds_the_anchors_that_fit_well_enough():
    # a 10 x 6 box: IoU 0.6 with 6x6... anchor 0 (6x6): 36/60 = 0.6; anchor 1 (12x6): 60/72 = 0.83 (the best)
    targets = torch.tensor([[0, 1, 15.0, 26.0, 25.0, 32.0]])
    assert YoloLoss(ANCHORS, STRIDES, C).assign(targets, [(8, 8), (4, 4)]).anchor.tolist() == [1]
    found = YoloLoss(ANCHORS, STRIDES, C, anchor_threshold=0.5).assign(targets, [(8, 8), (4, 4)])
    assert sorted(found.anchor.tolist()) == [0, 1] and found.labels.tolist() == [1, 1]
    assert sorted(YoloLoss(ANCHORS, STRIDES, C, anchor_threshold=0.7).assign(targets, [(8, 8), (4, 4)]).anchor.tolist()) == [1]
