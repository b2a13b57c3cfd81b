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
