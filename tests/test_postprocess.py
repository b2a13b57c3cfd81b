"""One post-processing rule (cspnet.ops.postprocess): the PyTorch and the NumPy implementation against a
brute-force reference of the rule, on random inputs; one place for its thresholds, read by every caller."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cspnet.ops.postprocess import postprocess, postprocess_numpy
from cspnet.ops.thresholds import EVALUATE, PREDICT, Thresholds
from test_detection_nms import reference_nms


def reference_rule(boxes: torch.Tensor, scores: torch.Tensor, size: tuple[int, int], limits: Thresholds) -> list[dict]:
    """The rule as the module docstring states it, in plain Python, one image at a time."""
    height, width = size
    results = []
    for image_boxes, image_scores in zip(boxes.tolist(), scores.tolist()):
        pairs = [(i, c, s) for i, row in enumerate(image_scores) for c, s in enumerate(row) if s > limits.conf_threshold]
        pairs = sorted(pairs, key=lambda p: -p[2])[: limits.max_candidates]  # sorted() is stable
        clipped = [[min(max(v, 0.0), lim) for v, lim in zip(image_boxes[i], (width, height, width, height))] for i, _, _ in pairs]
        keep = reference_nms(clipped, [s for _, _, s in pairs], [c for _, c, _ in pairs], limits.iou_threshold)
        keep = keep[: limits.max_detections]
        results.append({"boxes": [clipped[k] for k in keep], "scores": [pairs[k][2] for k in keep],
                        "labels": [pairs[k][1] for k in keep]})  # fmt: skip
    return results


@st.composite
def detector_outputs(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor, Thresholds]:
    """Decoded boxes (some outside the 40 x 60 image) and scores with frequent exact ties."""
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    n, k, c = draw(st.integers(1, 2)), draw(st.integers(0, 30)), draw(st.integers(1, 3))
    corner = torch.randint(-10, 60, (n, k, 2), generator=gen).float()
    boxes = torch.cat([corner, corner + torch.randint(0, 25, (n, k, 2), generator=gen).float()], 2)
    levels = draw(st.sampled_from([4, 1000]))  # 4 levels: ties everywhere; 1000: almost none
    scores = torch.randint(0, levels + 1, (n, k, c), generator=gen).float() / levels
    limits = Thresholds(
        conf_threshold=draw(st.sampled_from([0.0, 0.001, 0.25, 0.5])),
        iou_threshold=draw(st.sampled_from([0.0, 0.3, 0.45, 0.6, 1.0])),
        max_detections=draw(st.integers(1, 40)),
        max_candidates=draw(st.integers(1, 60)),
    )
    return boxes, scores, limits


@settings(max_examples=150, deadline=None)
@given(detector_outputs())
def test_torch_and_numpy_follow_the_rule_exactly(case: tuple) -> None:
    boxes, scores, limits = case
    expected = reference_rule(boxes, scores, (40, 60), limits)
    for implementation in (postprocess, postprocess_numpy):
        got = implementation(boxes, scores, [40, 60], **limits.kwargs())
        assert len(got) == len(expected)
        for g, e in zip(got, expected):
            assert g["labels"].tolist() == e["labels"], implementation.__name__
            assert g["scores"].tolist() == e["scores"], implementation.__name__
            assert g["boxes"].reshape(-1, 4).tolist() == e["boxes"], implementation.__name__
            assert g["labels"].dtype == torch.long and g["boxes"].shape == (len(e["labels"]), 4)


def test_the_scripted_rule_is_the_rule() -> None:
    gen = torch.Generator().manual_seed(3)
    boxes = torch.rand(2, 200, 2, generator=gen) * 80
    boxes = torch.cat([boxes, boxes + torch.rand(2, 200, 2, generator=gen) * 30], 2)
    scores = torch.rand(2, 200, 3, generator=gen)
    scripted = torch.jit.script(postprocess)
    for limits in (PREDICT, EVALUATE, EVALUATE.replace(max_candidates=50, max_detections=7)):
        for a, b in zip(scripted(boxes, scores, [64, 96], **limits.kwargs()), postprocess(boxes, scores, [64, 96], **limits.kwargs())):
            assert all(torch.equal(a[key], b[key]) for key in ("boxes", "scores", "labels"))


def test_numpy_keeps_the_best_max_detections_without_computing_the_rest() -> None:
    boxes = torch.tensor([[[0.0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]]])
    scores = torch.tensor([[[0.2], [0.9], [0.5]]])
    (found,) = postprocess_numpy(boxes, scores, (64, 64), 0.1, 0.5, 2)
    assert found["scores"].tolist() == pytest.approx([0.9, 0.5])


# -- one place for the thresholds ------------------------------------------------------------------


def test_the_two_threshold_sets() -> None:
    assert (PREDICT.conf_threshold, PREDICT.iou_threshold, PREDICT.max_detections) == (0.25, 0.45, 300)
    assert (EVALUATE.conf_threshold, EVALUATE.iou_threshold, EVALUATE.max_detections, EVALUATE.max_candidates) == (
        0.001, 0.6, 100, 1000
    )  # fmt: skip
    with pytest.raises(AttributeError):
        PREDICT.conf_threshold = 0.5  # type: ignore[misc]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"conf_threshold": -0.1}, "conf_threshold=-0.1 is invalid"),
        ({"iou_threshold": float("nan")}, "iou_threshold=nan is invalid"),
        ({"max_detections": 0}, "max_detections=0 is invalid"),
        ({"max_candidates": 2.5}, "max_candidates=2.5 is invalid"),
        ({"conf_threshold": True}, "conf_threshold=True is invalid"),
    ],
)
def test_invalid_thresholds_name_the_field(change: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PREDICT.replace(**change)


def test_every_caller_reads_its_defaults_from_the_constants() -> None:
    import inspect

    import cspnet
    from cspnet.cli import detect as cli
    from cspnet.detection.export import ExportableDetector, detector_info, export_detector_onnx
    from cspnet.inference import DetectionModel
    from cspnet.models.detectors import Detector
    from cspnet.training.detection_config import DetectionTrainConfig

    def defaults(function: object) -> dict:
        return {k: p.default for k, p in inspect.signature(function).parameters.items()}  # type: ignore[arg-type]

    for function in (Detector.detect, postprocess, postprocess_numpy, ExportableDetector.__init__, export_detector_onnx):
        got = defaults(function)
        assert {k: got[k] for k in PREDICT.kwargs() if k in got} == PREDICT.kwargs(), function
        assert "conf_threshold" in got
    # DetectionModel.detect and `detect predict`: None, the file's own thresholds (PREDICT's for every file
    # written here; a file exported with NMS, the ones baked into its graph).
    assert DetectionModel(None, detector_info(cspnet.create_model("cspdensenet_bc40_efm", num_classes=2), 64)  # type: ignore[arg-type]
                          ).thresholds() == PREDICT  # fmt: skip
    train = DetectionTrainConfig()
    assert (train.eval_conf, train.eval_iou, train.max_detections) == (
        EVALUATE.conf_threshold, EVALUATE.iou_threshold, EVALUATE.max_detections
    )  # fmt: skip
    parser = argparse.ArgumentParser()
    cli.add_parser(parser.add_subparsers(dest="command"))
    for command, limits in (("val", EVALUATE), ("predict", PREDICT), ("export", PREDICT)):
        args = {"val": ["--checkpoint", "x"], "predict": ["a.png", "--checkpoint", "x"], "export": ["--output", "x"]}[command]
        parsed = parser.parse_args(["detect", command, *args])
        if command in ("val", "predict"):  # None: the run's own eval_conf / eval_iou (EVALUATE's, above), the file's
            assert (parsed.conf, parsed.iou) == (None, None)
            continue
        assert (parsed.conf, parsed.iou) == (limits.conf_threshold, limits.iou_threshold), command
        if command != "val":
            assert parsed.max_detections == limits.max_detections, command


def test_detect_refuses_invalid_thresholds() -> None:
    import cspnet

    model = cspnet.create_model("cspdensenet_bc40_efm", num_classes=2).eval()
    with pytest.raises(ValueError, match="iou_threshold=1.5 is invalid"):
        model.detect(torch.zeros(1, 3, 32, 32), iou_threshold=1.5)


def test_numpy_iou_path_handles_nothing() -> None:
    from cspnet.ops.nms import greedy_nms

    assert greedy_nms(np.zeros((0, 4)), np.zeros(0), np.zeros(0), 0.5).tolist() == []
    found = postprocess_numpy(torch.zeros(1, 0, 4), torch.zeros(1, 0, 2), (8, 8))
    assert found[0]["boxes"].shape == (0, 4) and found[0]["labels"].shape == (0,)
