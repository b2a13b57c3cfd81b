"""A detector exported to ONNX with a dynamic batch axis gives the same raw head outputs in onnxruntime."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import cspnet

ort = pytest.importorskip("onnxruntime")


def test_onnx_export_has_a_dynamic_batch_and_equal_raw_outputs(tmp_path: Path) -> None:
    model = cspnet.create_model("cspdensenet_bc40_efm", num_classes=4, sam=True).eval()
    path = tmp_path / "detector.onnx"
    names = ["scale0", "scale1", "scale2"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about the (fixed) input size
        torch.onnx.export(
            model, (torch.randn(1, 3, 96, 96),), str(path), input_names=["images"], output_names=names,
            dynamic_axes={"images": {0: "batch"}, **{n: {0: "batch"} for n in names}}, opset_version=17, dynamo=False,
        )  # fmt: skip
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 3, 96, 96)  # another batch size than the export's
    with torch.no_grad():
        expected = model(x)
    got = session.run(names, {"images": x.numpy()})
    assert [g.shape for g in got] == [tuple(e.shape) for e in expected] == [(3, 27, 24, 24), (3, 27, 12, 12), (3, 27, 6, 6)]
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e.numpy(), rtol=1e-4, atol=1e-4 * float(e.abs().max()))


# -- the exported post-processing is detect()'s ---------------------------------------------------


def trained_like(num_classes: int = 3, seed: int = 0) -> cspnet.models.detectors.Detector:
    """The small EFM detector with head biases set so that, as after training, many boxes of several
    classes pass the thresholds and overlap (NMS has work to do), some of them across the image edge."""
    torch.manual_seed(seed)
    model = cspnet.create_model("cspdensenet_bc40_efm", num_classes=num_classes).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for level in model.head.levels:
            pred = level[-1]
            pred.weight.mul_(0.05)
            bias = pred.bias.view(model.head.anchors_per_scale, -1)
            bias[:, 2:4] = 0.5  # boxes larger than their anchors: some cross the image edge
            bias[:, 4] = 1.0
            bias[:, 5:] = torch.randn(bias.shape[0], num_classes, generator=gen)
    return model


def run_exported(path: Path, images: torch.Tensor) -> torch.Tensor:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(["detections"], {"images": images.numpy()})[0])


@pytest.mark.parametrize(
    "limits",
    [{}, {"conf_threshold": 0.4, "iou_threshold": 0.3, "max_detections": 20, "max_candidates": 150}],
    ids=["predict", "tight"],
)
def test_exported_nms_equals_detect(limits: dict, tmp_path: Path) -> None:
    from cspnet.detection.export import export_detector_onnx

    model = trained_like()
    result = export_detector_onnx(model, tmp_path / "d.onnx", 64, nms=True, **limits)
    assert result.max_rel_diff < 1e-4
    images = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(7))  # another batch size
    rows = run_exported(tmp_path / "d.onnx", images)
    found = model.detect(images, **limits)
    assert sum(len(f["scores"]) for f in found) > 3 * 15  # NMS kept many, of several classes
    assert rows[:, 0].tolist() == sorted(rows[:, 0].tolist())  # ordered by image
    for i, expected in enumerate(found):
        mine = rows[rows[:, 0] == i]
        assert mine[:, 6].long().tolist() == expected["labels"].tolist(), i
        torch.testing.assert_close(mine[:, 5], expected["scores"], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(mine[:, 1:5], expected["boxes"], atol=1e-3, rtol=1e-5)
        assert (mine[:, 1:5] >= 0).all() and (mine[:, 1:5] <= 64).all()  # clipped before NMS
    if limits:  # max_detections binds: each image keeps exactly that many, the best
        assert [len(f["scores"]) for f in found] == [limits["max_detections"]] * 3


def test_exported_nms_with_nothing_above_the_threshold(tmp_path: Path) -> None:
    from cspnet.detection.export import export_detector_onnx

    result = export_detector_onnx(trained_like(), tmp_path / "d.onnx", 64, nms=True, conf_threshold=1.0)
    assert result.max_rel_diff < 1e-5  # no detection rows; the raw maps agree to float rounding
    assert run_exported(tmp_path / "d.onnx", torch.rand(2, 3, 64, 64)).shape == (0, 7)


def test_an_untrained_detector_exports_finite_boxes(tmp_path: Path) -> None:
    """Its raw outputs reach thousands: decoding without the size bound gave infinite boxes and a NaN check."""
    from cspnet.detection.export import export_detector_onnx

    torch.manual_seed(0)
    model = cspnet.create_model("csppeleenet_efm", num_classes=2).eval()
    result = export_detector_onnx(model, tmp_path / "p.onnx", 192)
    assert np.isfinite(result.max_rel_diff)
    session = ort.InferenceSession(str(tmp_path / "p.onnx"), providers=["CPUExecutionProvider"])
    boxes, scores = session.run(["boxes", "scores"], {"images": torch.rand(1, 3, 192, 192).numpy()})
    assert np.isfinite(boxes).all() and np.isfinite(scores).all()


def onnx_nms(tmp_path: Path, boxes: list, scores: list, max_per_class: int, iou: float, conf: float) -> list[list[int]]:
    """One NonMaxSuppression node in onnxruntime: (image, class, box) rows."""
    import onnx
    from onnx import TensorProto, helper

    inputs = [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, None, 4]),
              helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 1, None])]  # fmt: skip
    constants = [
        helper.make_tensor("max", TensorProto.INT64, [1], [max_per_class]),
        helper.make_tensor("iou", TensorProto.FLOAT, [1], [iou]),
        helper.make_tensor("conf", TensorProto.FLOAT, [1], [conf]),
    ]
    node = helper.make_node("NonMaxSuppression", ["boxes", "scores", "max", "iou", "conf"], ["selected"])
    output = helper.make_tensor_value_info("selected", TensorProto.INT64, [None, 3])
    graph = helper.make_graph([node], "nms", inputs, [output], initializer=constants)
    path = tmp_path / "nms.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {"boxes": np.array([boxes], np.float32), "scores": np.array([[scores]], np.float32)}
    return session.run(["selected"], feed)[0].tolist()


def test_onnx_nms_semantics_are_the_rule_for_one_class(tmp_path: Path) -> None:
    """What the exported graph relies on: strict score threshold, strict IoU, equal scores in box order."""
    from cspnet.ops.nms import batched_nms

    # Boxes 0 and 1 overlap with IoU exactly 1/3 (1 of 3 px); box 2 duplicates box 0; box 3 scores exactly conf.
    boxes = [[0.0, 0, 2, 1], [1, 0, 3, 1], [0, 0, 2, 1], [10, 10, 12, 12]]
    scores = [0.5, 0.5, 0.5, 0.25]
    rows = onnx_nms(tmp_path, boxes, scores, 10, 1 / 3, 0.25)
    ours = batched_nms(torch.tensor(boxes), torch.tensor(scores), torch.zeros(4, dtype=torch.long), 1 / 3)
    assert [r[2] for r in rows] == [i for i in ours.tolist() if scores[i] > 0.25] == [0, 1]
    assert [r[2] for r in onnx_nms(tmp_path, boxes, scores, 1, 1 / 3, 0.0)] == [0]  # max_output_boxes_per_class
