"""cspnet.ops.boxes, the one home of box geometry: conversions, clipping, IoU (tensor and NumPy), the
YOLO box coder and its bounded decoding (an untrained or extreme detector decodes finite boxes)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import cspnet
from cspnet.detection.data import Letterbox
from cspnet.detection.loss import YoloLoss
from cspnet.detection.metrics import coco_results
from cspnet.ops.boxes import (
    MAX_SIZE_LOGIT,
    box_convert,
    box_iou,
    box_iou_numpy,
    clip_boxes,
    yolo_decode,
    yolo_encode,
)

coordinate = st.floats(-50, 150, allow_nan=False, width=32)
xyxy_box = st.tuples(coordinate, coordinate, st.floats(0, 80, width=32), st.floats(0, 80, width=32)).map(
    lambda t: [t[0], t[1], t[0] + t[2], t[1] + t[3]]
)
boxes_strategy = st.lists(xyxy_box, min_size=1, max_size=12)


@settings(max_examples=60, deadline=None)
@given(boxes_strategy)
def test_conversions_follow_their_definitions_and_round_trip(boxes: list) -> None:
    b = torch.tensor(boxes, dtype=torch.float64)
    x1, y1, x2, y2 = b.unbind(1)
    assert torch.equal(box_convert(b, "xyxy", "xywh"), torch.stack([x1, y1, x2 - x1, y2 - y1], 1))
    assert torch.equal(box_convert(b, "xyxy", "cxcywh"), torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], 1))
    for fmt in ("xywh", "cxcywh"):
        torch.testing.assert_close(box_convert(box_convert(b, "xyxy", fmt), fmt, "xyxy"), b)
        torch.testing.assert_close(box_convert(box_convert(b, "xyxy", fmt), fmt, "xywh"), box_convert(b, "xyxy", "xywh"))


def test_unknown_formats_are_named() -> None:
    with pytest.raises(ValueError, match="box format xyz is invalid"):
        box_convert(torch.zeros(1, 4), "xyz", "xyxy")


@settings(max_examples=60, deadline=None)
@given(boxes_strategy, st.integers(1, 120), st.integers(1, 120))
def test_clipping_keeps_every_coordinate_inside_the_image(boxes: list, height: int, width: int) -> None:
    b = torch.tensor(boxes)
    got = clip_boxes(b, height, width)
    for (x1, y1, x2, y2), clipped in zip(boxes, got.tolist()):
        expected = [min(max(x1, 0), width), min(max(y1, 0), height), min(max(x2, 0), width), min(max(y2, 0), height)]
        assert clipped == pytest.approx(expected)
    assert torch.equal(torch.jit.script(clip_boxes)(b, float(height), float(width)), got)


@settings(max_examples=60, deadline=None)
@given(boxes_strategy, boxes_strategy)
def test_numpy_iou_is_the_tensor_iou_bit_for_bit(a: list, b: list) -> None:
    ta, tb = torch.tensor(a), torch.tensor(b)
    expected = box_iou(ta, tb).numpy()
    got = box_iou_numpy(ta.numpy(), tb.numpy())
    assert got.dtype == np.float32 and np.array_equal(got, expected)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.floats(0, 1, exclude_max=True),
                       st.floats(0.05, 20), st.floats(0.05, 20)), min_size=1, max_size=10),  # fmt: skip
    st.sampled_from([8, 16, 32]),
)
def test_decoding_inverts_encoding(cells: list, stride: int) -> None:
    """yolo_decode(logit(offset), log(size / anchor)) is the encoded box again."""
    gen = torch.Generator().manual_seed(len(cells) * stride)
    n = len(cells)
    grid = torch.randint(0, 20, (n, 2), generator=gen).float()
    anchor = torch.rand(n, 2, generator=gen) * 100 + 4
    offset = torch.tensor([c[:2] for c in cells]).clamp(1e-3, 1 - 1e-3)
    size = torch.tensor([c[2:] for c in cells]) * anchor
    centre = (grid + offset) * stride
    boxes = torch.cat([centre - size / 2, centre + size / 2], 1)
    target = yolo_encode(boxes, grid, torch.tensor(float(stride)), anchor)
    torch.testing.assert_close(target[:, :2], offset, atol=1e-4, rtol=1e-4)
    raw = torch.cat([torch.logit(target[:, :2].double()).float(), target[:, 2:]], 1)
    torch.testing.assert_close(yolo_decode(raw, grid, torch.tensor(float(stride)), anchor), boxes, atol=2e-3, rtol=1e-4)


def test_size_logits_are_bounded_as_torchvision_bounds_them() -> None:
    assert MAX_SIZE_LOGIT == pytest.approx(math.log(1000 / 16))
    raw = torch.tensor([[0.0, 0.0, 1e4, -1e4], [0.0, 0.0, float("inf"), 3.0]])
    boxes = yolo_decode(raw, torch.zeros(2, 2), torch.tensor(8.0), torch.tensor([[10.0, 10.0]]))
    assert torch.isfinite(boxes).all()
    sizes = boxes[:, 2:] - boxes[:, :2]
    assert sizes[0].tolist() == pytest.approx([625.0, 0.0], abs=1e-3)  # 62.5 anchors wide, 0 high
    assert sizes[1].tolist() == pytest.approx([625.0, 10 * math.exp(3.0)], rel=1e-5)


def _extreme(model: torch.nn.Module, value: float) -> torch.nn.Module:
    """Prediction convs that put out ``value`` everywhere (a detector trained into the ground)."""
    with torch.no_grad():
        for level in model.head.levels:
            level[-1].weight.zero_()
            level[-1].bias.fill_(value)
    return model


@pytest.mark.parametrize("value", [1e4, -1e4, 3e38])
def test_extreme_logit_detectors_decode_and_detect_finite_boxes(value: float) -> None:
    model = _extreme(cspnet.create_model("cspdensenet_bc40_efm", num_classes=2).eval(), value)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        boxes, scores = model.decode(model(x))
        assert torch.isfinite(boxes).all() and torch.isfinite(scores).all()
        for found in model.detect(x):
            assert torch.isfinite(found["boxes"]).all()
            assert (found["boxes"] >= 0).all() and (found["boxes"][:, 2:] <= 64).all()


def test_an_untrained_csppeleenet_efm_decodes_finite_boxes() -> None:
    """Its raw outputs reach thousands at its own input size (416): exp() of them used to be infinite."""
    torch.manual_seed(0)
    model = cspnet.create_model("csppeleenet_efm").eval()
    with torch.no_grad():
        outputs = model(torch.rand(1, 3, 416, 416, generator=torch.Generator().manual_seed(1)))
        assert max(float(o.abs().max()) for o in outputs) > 100  # exp() of this overflows float32
        boxes, _ = model.decode(outputs)
    assert torch.isfinite(boxes).all()


def test_the_giou_loss_of_extreme_predictions_is_finite() -> None:
    model = _extreme(cspnet.create_model("cspdensenet_bc40_efm", num_classes=2), 1e4).train()
    loss = YoloLoss(model.get_buffer("anchors"), model.strides, 2, box_loss="giou")
    targets = torch.tensor([[0, 1, 10.0, 10.0, 30.0, 40.0], [1, 0, 5.0, 5.0, 60.0, 60.0]])
    total, parts = loss(model(torch.rand(2, 3, 64, 64)), targets, (64, 64))
    assert torch.isfinite(total) and all(torch.isfinite(v) for v in parts.values())


def test_the_data_and_metrics_use_the_same_geometry() -> None:
    lb = Letterbox.fit(width=200, height=100, size=64)  # scale 0.32, 16 px of padding above and below
    outside = torch.tensor([[-10.0, -10.0, 70.0, 70.0]])
    unclipped = (outside - torch.tensor([0.0, 16.0, 0.0, 16.0])) / 0.32
    assert torch.equal(lb.to_image(outside), clip_boxes(unclipped, 100, 200))
    found = [{"boxes": torch.tensor([[1.5, 2.25, 11.5, 22.25]]), "scores": torch.tensor([0.5]), "labels": torch.tensor([0])}]
    assert coco_results(found)[0]["bbox"] == [1.5, 2.25, 10.0, 20.0]
