"""The detectors' own NMS, IoU, Maxout, SPP and box decoding against their definitions."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cspnet.detection import Maxout, SpatialPyramidPooling, batched_nms, box_iou, decode, postprocess
from cspnet.models.detectors.blocks import concat_maxout


def reference_iou(a: list[float], b: list[float]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = max(0.0, a[2] - a[0]) * max(0.0, a[3] - a[1]) + max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def reference_nms(boxes: list[list[float]], scores: list[float], labels: list[int], threshold: float) -> list[int]:
    """Greedy NMS as defined: best remaining box first (ties: lower index), drop same-label boxes above the IoU."""
    remaining = sorted(range(len(boxes)), key=lambda i: (-scores[i], i))
    kept: list[int] = []
    while remaining:
        best = remaining.pop(0)
        kept.append(best)
        remaining = [
            j for j in remaining if labels[j] != labels[best] or reference_iou(boxes[best], boxes[j]) <= threshold
        ]
    return kept


# Boxes on a coarse grid make exact ties in scores and coordinates (identical boxes) common.
coordinate = st.integers(0, 12).map(float)
box = st.tuples(coordinate, coordinate, st.integers(0, 8), st.integers(0, 8)).map(
    lambda t: [t[0], t[1], t[0] + t[2], t[1] + t[3]]
)
detections = st.lists(st.tuples(box, st.integers(0, 4).map(lambda s: s / 4), st.integers(0, 2)), max_size=40)


@settings(max_examples=150, deadline=None)
@given(detections, st.sampled_from([0.0, 0.3, 0.5, 0.7, 1.0]))
def test_nms_equals_the_brute_force_reference(dets: list, threshold: float) -> None:
    boxes = [d[0] for d in dets]
    scores = [d[1] for d in dets]
    labels = [d[2] for d in dets]
    expected = reference_nms(boxes, scores, labels, threshold)
    got = batched_nms(
        torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        torch.tensor(scores, dtype=torch.float32),
        torch.tensor(labels, dtype=torch.long),
        threshold,
    )
    assert got.tolist() == expected


@settings(max_examples=50, deadline=None)
@given(st.lists(box, min_size=1, max_size=10), st.lists(box, min_size=1, max_size=10))
def test_iou_matrix_equals_its_definition(a: list, b: list) -> None:
    got = box_iou(torch.tensor(a), torch.tensor(b))
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            assert math.isclose(got[i, j].item(), reference_iou(x, y), rel_tol=1e-6, abs_tol=1e-7)


def test_nms_of_nothing_is_empty() -> None:
    keep = batched_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long), 0.5)
    assert keep.shape == (0,) and keep.dtype == torch.long


def test_equal_scores_keep_the_earlier_box_and_other_labels_survive() -> None:
    boxes = torch.tensor([[0.0, 0, 10, 10]] * 3)
    keep = batched_nms(boxes, torch.tensor([0.5, 0.5, 0.5]), torch.tensor([1, 1, 0]), 0.5)
    assert keep.tolist() == [0, 2]


def test_nms_is_torchscript_compatible() -> None:
    scripted = torch.jit.script(batched_nms)
    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]])
    args = (boxes, torch.tensor([0.9, 0.8, 0.7]), torch.tensor([0, 0, 0]), 0.5)
    assert scripted(*args).tolist() == batched_nms(*args).tolist() == [0, 2]


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 4), st.integers(1, 5), st.integers(1, 3), st.integers(0, 2**16))
def test_maxout_is_the_max_over_strided_channel_groups(out_chs: int, groups: int, side: int, seed: int) -> None:
    x = torch.randn(2, out_chs * groups, side, side, generator=torch.Generator().manual_seed(seed))
    got = Maxout(out_chs)(x)
    assert got.shape == (2, out_chs, side, side)
    for g in range(out_chs):
        members = [g + j * out_chs for j in range(groups)]  # darknet's maxpool_depth: g, g+K, g+2K, ...
        expected = torch.stack([x[:, c] for c in members]).amax(0)
        assert torch.equal(got[:, g], expected)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 9), min_size=1, max_size=4), st.integers(1, 6), st.booleans())
def test_concat_maxout_equals_maxout_of_the_concatenation(widths: list[int], out_chs: int, grad: bool) -> None:
    total = sum(widths)
    widths[-1] += (-total) % out_chs  # make the concatenation a multiple of out_chs
    parts = [torch.randn(2, w, 3, 2, requires_grad=grad) for w in widths]
    copies = [p.detach().clone() for p in parts]
    got = concat_maxout(parts, out_chs)
    assert torch.equal(got, Maxout(out_chs)(torch.cat(parts, 1)))
    assert all(torch.equal(p, c) for p, c in zip(parts, copies))  # the in-place folding spares the inputs
    if grad:
        got.sum().backward()
        assert all(p.grad is not None for p in parts)


def test_maxout_rejects_channels_it_cannot_group() -> None:
    with pytest.raises(ValueError, match="multiple of 4"):
        Maxout(4)(torch.randn(1, 6, 2, 2))


def test_spp_concatenates_largest_pool_first_and_keeps_the_size() -> None:
    x = torch.randn(1, 2, 13, 13)
    out = SpatialPyramidPooling()(x)
    assert out.shape == (1, 8, 13, 13)
    assert torch.equal(out[:, 6:], x)
    # Pool 13 at the centre of a 13x13 map sees every pixel.
    assert torch.equal(out[0, :2, 6, 6], x[0].amax(dim=(1, 2)))
    assert torch.equal(out[:, 4:6], torch.nn.functional.max_pool2d(x, 5, 1, 2))


def test_decode_places_a_zero_prediction_at_the_cell_centre_with_the_anchor_size() -> None:
    num_classes = 2
    out = torch.zeros(1, 3 * (5 + num_classes), 2, 3)
    anchors = torch.tensor([[[10.0, 20.0], [30.0, 40.0], [50.0, 60.0]]])
    boxes, scores = decode([out], anchors, [16], num_classes)
    assert boxes.shape == (1, 3 * 2 * 3, 4) and scores.shape == (1, 18, num_classes)
    # anchor 1, row 1, column 2: centre (2.5, 1.5) * 16, size 30 x 40.
    index = 1 * 6 + 1 * 3 + 2
    assert boxes[0, index].tolist() == [40 - 15, 24 - 20, 40 + 15, 24 + 20]
    assert torch.allclose(scores, torch.full_like(scores, 0.25))  # sigmoid(0) * sigmoid(0)


@pytest.mark.parametrize("scripted", [False, True])
def test_postprocess_thresholds_clips_and_suppresses(scripted: bool) -> None:
    run = torch.jit.script(postprocess) if scripted else postprocess
    boxes = torch.tensor([[[-5.0, -5, 20, 20], [0, 0, 20, 20], [100, 100, 120, 120], [50, 50, 60, 60]]])
    scores = torch.tensor([[[0.9, 0.0], [0.8, 0.0], [0.0, 0.6], [0.1, 0.2]]])
    (result,) = run(boxes, scores, [64, 110], 0.25, 0.5)
    assert result["labels"].tolist() == [0, 1]
    assert result["scores"].tolist() == pytest.approx([0.9, 0.6])
    assert result["boxes"].tolist() == [[0, 0, 20, 20], [100, 64, 110, 64]]


def test_decode_is_torchscript_compatible() -> None:
    out = [torch.randn(2, 3 * 7, 4, 4), torch.randn(2, 3 * 7, 2, 2)]
    anchors = torch.rand(2, 3, 2) * 50
    for a, b in zip(torch.jit.script(decode)(out, anchors, [8, 16], 2), decode(out, anchors, [8, 16], 2)):
        torch.testing.assert_close(a, b)
