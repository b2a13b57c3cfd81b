"""int8 files for each engine (``cspnet.export.quantize``): the activations in the form that engine's
int8 kernels take (onnxruntime: uint8 with a zero point; OpenVINO: int8, no zero point), each file
keeping the digits accuracy on both engines; ``load_model`` quantises for the engine it loads on."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from cspnet.data import load_digits_split
from cspnet.export import export_model
from cspnet.export import quantize as quantize_module
from cspnet.export.quantize import INT8_ENGINES, quantize_int8, quantize_onnx
from cspnet.inference import load_model
from test_inference import DIGITS_SIDE, digits_checkpoint, top1  # noqa: F401  (digits_checkpoint: a fixture)


def activation_zero_points(path: Path) -> list[np.ndarray]:
    """The zero points of the QuantizeLinear nodes: the activations (weights are stored quantised)."""
    model = onnx.load(str(path))
    constants = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return [constants[node.input[2]] for node in model.graph.node if node.op_type == "QuantizeLinear"]


@pytest.fixture(scope="module")
def fp32_file(digits_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    from cspnet.trained import load_trained

    trained = load_trained(digits_checkpoint)
    out = tmp_path_factory.mktemp("fp32") / "digits.onnx"
    export_model(trained.model, "onnx", out, DIGITS_SIDE, info=load_model(digits_checkpoint).info)
    return out


@pytest.mark.parametrize("engine", INT8_ENGINES)
def test_each_engine_gets_its_activation_form_and_the_accuracy_holds_on_both(
    engine: str, fp32_file: Path, digits_checkpoint: Path, tmp_path: Path  # noqa: F811
) -> None:
    _, val = load_digits_split(DIGITS_SIDE)
    reference = top1(load_model(digits_checkpoint), val.images, val.targets)
    out = quantize_int8(fp32_file, tmp_path / "int8.onnx", load_model(fp32_file, "onnxruntime").info, "digits",
                        count=64, engine=engine)  # fmt: skip
    points = activation_zero_points(out)
    assert points, "no activation was quantised"
    if engine == "openvino":
        assert all(p.dtype == np.int8 and not p.any() for p in points)  # symmetric: no zero point to subtract
    else:
        assert all(p.dtype == np.uint8 for p in points) and any(p.any() for p in points)
    for backend in INT8_ENGINES:  # either file runs on either engine
        loaded = load_model(out, backend)
        assert loaded.precision == "int8"
        assert abs(top1(loaded, val.images, val.targets) - reference) <= 0.5, (engine, backend)


def test_load_model_quantises_for_the_engine_it_loads_on(fp32_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[str] = []
    real = quantize_module.quantize_onnx

    def spy(*args, engine: str = "onnxruntime", **kwargs):  # type: ignore[no-untyped-def]
        asked.append(engine)
        return real(*args, engine=engine, **kwargs)

    monkeypatch.setattr(quantize_module, "quantize_onnx", spy)
    for backend in INT8_ENGINES:
        assert load_model(fp32_file, backend, precision="int8", calibration_data="digits",
                          calibration_images=16).precision == "int8"  # fmt: skip
    assert asked == list(INT8_ENGINES)


def test_an_unknown_engine_is_refused_before_any_work(fp32_file: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="int8 engine 'tensorrt' is invalid: expected one of onnxruntime, openvino"):
        quantize_int8(fp32_file, tmp_path / "x.onnx", load_model(fp32_file, "onnxruntime").info, "no/such/folder",
                      engine="tensorrt")  # fmt: skip
    assert not (tmp_path / "x.onnx").exists()


def test_scopes_and_float_nodes_stay_float(tmp_path: Path) -> None:
    """Only the first conv is quantised (by scope, or with the second named float): the second keeps float weights."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1)).eval()
    path = tmp_path / "two.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation notices
        torch.onnx.export(model, (torch.rand(1, 3, 8, 8),), str(path), input_names=["x"], dynamo=False)
    batches = [np.random.default_rng(0).random((1, 3, 8, 8), dtype=np.float32)]
    for name, options in (("scoped", {"scopes": ("/0/",)}), ("named", {"float_nodes": {"/2/Conv"}})):
        out = quantize_onnx(path, tmp_path / f"{name}.onnx", batches, **options)  # type: ignore[arg-type]
        graph = onnx.load(str(out)).graph
        dequantized = {node.output[0] for node in graph.node if node.op_type == "DequantizeLinear"}
        convs = {node.name: node for node in graph.node if node.op_type == "Conv"}
        assert set(convs["/0/Conv"].input[:2]) <= dequantized, name  # input and weight through Q/DQ
        assert convs["/2/Conv"].input[1] not in dequantized, name  # its weight stays float


def test_a_detector_graph_quantises_without_leaving_files_in_the_current_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A detector's box decoding stops onnxruntime's symbolic shape inference, which then saves the model
    into the current folder; quantize_onnx keeps that in its temporary folder (and takes relative paths)."""
    import cspnet
    from cspnet.detection.export import export_detector_onnx

    model = cspnet.create_model("cspdensenet_bc40_efm", num_classes=3).eval()
    export_detector_onnx(model, tmp_path / "fp32.onnx", 64)
    monkeypatch.chdir(tmp_path)
    batches = [np.random.default_rng(0).random((2, 3, 64, 64), dtype=np.float32)]
    out = quantize_onnx(Path("fp32.onnx"), Path("int8.onnx"), batches, engine="openvino", scopes=("/detector/",))
    assert out.is_file() and sorted(p.name for p in tmp_path.iterdir()) == ["fp32.onnx", "int8.onnx"]
