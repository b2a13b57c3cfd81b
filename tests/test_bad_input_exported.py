"""Exported files whose metadata was edited, copied from another model or is simply wrong: every
field is checked on its own and against the graph when the file is loaded, and each problem is a
one-line ``ValueError`` (exit 2 from the CLI), never a traceback, a wrong percentage or a silent
mislabelling. Also: external data outside the model's folder, and inputs of another dtype."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from cspnet.cli.main import main
from cspnet.export import export_model
from cspnet.inference import load_model
from cspnet.inference.engines import OnnxRuntimeEngine
from cspnet.metadata import MAX_IMG_SIZE, TORCHSCRIPT_METADATA, ModelInfo, read_onnx_info
from cspnet.models import create_model

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.(load|save)` is deprecated:DeprecationWarning")

IMG = 32
INFO = ModelInfo("cspdensenet_bc40", tuple(str(i) for i in range(10)), IMG, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
FIELDS = ("model_name", "class_names", "img_size", "mean", "std", "in_chans", "task", "resize", "crop_pct",
          "input_format", "output", "precision")  # fmt: skip


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 10-class classifier at 32 px as ONNX and TorchScript, and another model (5 classes, 64 px)."""
    folder = tmp_path_factory.mktemp("exported")
    torch.manual_seed(0)
    model = create_model("cspdensenet_bc40", num_classes=10)
    other = create_model("cspdensenet_bc40", num_classes=5)
    other_info = ModelInfo("cspdensenet_bc40", tuple("abcde"), 64, (0.5,) * 3, (0.5,) * 3)
    return {
        "onnx": export_model(model, "onnx", folder / "m.onnx", IMG, info=INFO).path,
        "torchscript": export_model(model, "torchscript", folder / "m.pt", IMG, info=INFO).path,
        "other_onnx": export_model(other, "onnx", folder / "other.onnx", 64, info=other_info).path,
    }


def onnx_metadata(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def with_onnx_metadata(source: Path, target: Path, changes: dict[str, str | None]) -> Path:
    """A copy of the ONNX file ``source`` whose metadata has ``changes`` (``None``: the key removed)."""
    proto = onnx.load(str(source))
    metadata = {**onnx_metadata(source), **changes}
    del proto.metadata_props[:]
    for key, value in metadata.items():
        if value is not None:
            proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(target))
    return target


def with_torchscript_metadata(source: Path, target: Path, changes: dict[str, str | None]) -> Path:
    extra = {TORCHSCRIPT_METADATA: ""}
    module = torch.jit.load(str(source), _extra_files=extra)
    metadata = {k: v for k, v in {**json.loads(extra[TORCHSCRIPT_METADATA]), **changes}.items() if v is not None}
    torch.jit.save(module, str(target), _extra_files={TORCHSCRIPT_METADATA: json.dumps(metadata)})
    return target


def one_line_value_error(call, *args, **kwargs) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError) as caught:
        call(*args, **kwargs)
    message = str(caught.value)
    assert "\n" not in message and len(message) < 600, message
    return message


# --- each field on its own ------------------------------------------------------------------------------

# Values a corrupted or hand-edited field takes: numbers out of range, NaN, the wrong JSON shape.
BAD_TEXT = st.sampled_from([
    "", " ", "nan", "NaN", "inf", "-inf", "-1", "0", "1e9", "4097", "100000", "32.5", "abc", "[]", "{}", "null",
    "[NaN, 0.2, 0.3]", "[0.1, -0.2, 0.3]", "[0.1, 0.2]", '["a", 1]', '[["nested"]]', "[true, true, true]",
    '"a string"', "[1e400, 1, 1]", "9" * 5000, "[" * 10000, "logits", "probabilities", "uint8_nhwc", "int8", "bf16",
])  # fmt: skip
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=10,
).map(lambda v: json.dumps(v))  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(field=st.sampled_from(FIELDS), value=BAD_TEXT | JSON_VALUES | st.text(max_size=40) | st.none())
def test_a_corrupted_field_is_a_one_line_value_error_or_a_valid_contract(field: str, value: str | None) -> None:
    metadata = {**INFO.to_metadata(), field: value}
    if value is None:
        del metadata[field]
    try:
        info = ModelInfo.from_metadata(metadata, source="m.onnx")
    except ValueError as exc:
        message = str(exc)
        assert message.startswith("m.onnx has ") and "\n" not in message and len(message) < 400, message
        return
    # Accepted: then every field is usable as it is (what the engines and predict rely on).
    assert 1 <= info.img_size <= MAX_IMG_SIZE and info.class_names and all(isinstance(c, str) for c in info.class_names)
    assert all(math.isfinite(v) for v in info.mean) and all(math.isfinite(v) and v > 0 for v in info.std)
    assert len(info.mean) == len(info.std) == info.in_chans
    assert info.crop_pct is None or 0 < info.crop_pct <= 1


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"std": "[0.2, NaN, 0.3]"}, "std [0.2, nan, 0.3] is invalid: every value must be finite and positive"),
        ({"std": "[0.2, 0, 0.3]"}, "finite and positive"),
        ({"mean": "[Infinity, 0.4, 0.3]"}, "mean [inf, 0.4, 0.3] is invalid"),
        ({"img_size": "5000"}, "img_size 5000 is too large: at most 4096"),
        ({"img_size": "0"}, "img_size 0 is invalid"),
        ({"class_names": "[]"}, "class_names () is invalid"),
        ({"class_names": '[["a"], "b"]'}, "expected a list of names"),
        ({"task": "segmentation"}, "task 'segmentation' is invalid: expected one of classification, detection"),
        ({"task": "detection"}, "output 'logits' is invalid: expected one of boxes_scores, detections"),
        ({"strides": "[8, 16, 32]"}, "strides: a detector's field, but task is 'classification'"),
        ({"precision": "fp64"}, "precision 'fp64' is invalid"),
        ({"input_format": "rgb"}, "input_format 'rgb' is invalid"),
        ({"output": "scores"}, "output 'scores' is invalid"),
        ({"in_chans": "100000"}, "in_chans 100000 is invalid"),
        ({"resize": "short_side_centre_crop", "crop_pct": "nan"}, "crop_pct nan is invalid"),
    ],
)
def test_named_field_cases(changes: dict[str, str], message: str) -> None:
    error = one_line_value_error(ModelInfo.from_metadata, {**INFO.to_metadata(), **changes}, "m.onnx")
    assert message in error, error


# --- against the graph -------------------------------------------------------------------------------------

GRAPH_CASES = {
    # issue 18: 20 class names for 10 outputs were accepted; 3 for 10 ended in an IndexError
    "20 names": ({"class_names": json.dumps([f"c{i}" for i in range(20)])}, "names 20 classes"),
    "3 names": ({"class_names": '["a", "b", "c"]'}, "names 3 classes"),
    # issue 18: output=probabilities on a logits graph printed "227.8 %"
    "probabilities": ({"output": "probabilities"}, "not probabilities"),
    # issue 18: eval with metadata img_size 4000 tried to allocate 115 GB
    "img_size 4000": ({"img_size": "4000"}, "the graph takes (N, 3, 32, 32)"),
    "uint8 input": ({"input_format": "uint8_nhwc"}, "does not belong to this graph"),
    "in_chans 1": ({"in_chans": "1", "mean": "[0.5]", "std": "[0.5]"}, "does not belong to this graph"),
}


@pytest.mark.parametrize("case", GRAPH_CASES)
@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_onnx_metadata_that_contradicts_the_graph(case: str, backend: str, files: dict[str, Path], tmp_path: Path) -> None:
    changes, message = GRAPH_CASES[case]
    path = with_onnx_metadata(files["onnx"], tmp_path / "edited.onnx", changes)
    error = one_line_value_error(load_model, path, backend)
    assert message in error and str(path) in error, error


@pytest.mark.parametrize("case", ["20 names", "3 names", "probabilities", "uint8 input", "in_chans 1"])
def test_torchscript_metadata_that_contradicts_the_graph(case: str, files: dict[str, Path], tmp_path: Path) -> None:
    # A scripted graph declares no shapes: what it does with one image of the described input tells.
    # (Its input side cannot be checked: a scripted CNN runs at any size; MAX_IMG_SIZE bounds it.)
    changes, message = GRAPH_CASES[case]
    path = with_torchscript_metadata(files["torchscript"], tmp_path / "edited.pt", changes)
    error = one_line_value_error(load_model, path, "torch")
    assert str(path) in error and ("does not belong to this graph" in error or "does not run" in error), error


def test_another_models_graph_with_copied_metadata_is_refused(files: dict[str, Path], tmp_path: Path) -> None:
    copied = {k: v for k, v in onnx_metadata(files["onnx"]).items()}
    path = with_onnx_metadata(files["other_onnx"], tmp_path / "copied.onnx", copied)
    assert "does not belong to this graph" in one_line_value_error(read_onnx_info, path)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(FIELDS), value=BAD_TEXT | st.text(max_size=20))
def test_a_loaded_file_with_any_corrupted_field_runs_correctly_or_is_refused_in_one_line(
    field: str, value: str, files: dict[str, Path], tmp_path: Path
) -> None:
    path = with_onnx_metadata(files["onnx"], tmp_path / "fuzzed.onnx", {field: value})
    try:
        model = load_model(path, "onnxruntime")
    except ValueError as exc:
        assert "\n" not in str(exc) and str(path) in str(exc), str(exc)
        return
    # Accepted: the contract fits the graph, so a batch as described runs and has one score per name.
    batch = torch.zeros(2, *model.info.input_shape, dtype=torch.uint8 if model.info.input_type == "uint8" else torch.float32)
    out = model.probabilities(batch)
    assert out.shape == (2, len(model.info.class_names))
    torch.testing.assert_close(out.sum(1), torch.ones(2), atol=1e-3, rtol=0)


def _image(tmp_path: Path) -> Path:
    path = tmp_path / "x.png"
    Image.fromarray(np.full((40, 40, 3), 128, dtype=np.uint8)).save(path)
    return path


@pytest.mark.parametrize("case", ["20 names", "3 names", "probabilities", "img_size 4000"])
def test_predict_and_eval_refuse_such_a_file_in_one_line(
    case: str, files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = with_onnx_metadata(files["onnx"], tmp_path / "edited.onnx", GRAPH_CASES[case][0])
    for argv in (["predict", str(_image(tmp_path)), "--checkpoint", str(path), "--backend", "onnxruntime"],
                 ["eval", "--checkpoint", str(path), "--backend", "onnxruntime", "--data", "digits",
                  "--output", str(tmp_path / "eval")]):  # fmt: skip
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and GRAPH_CASES[case][1] in err, err
    assert not (tmp_path / "eval").exists()


# --- external data, engines' own refusals ------------------------------------------------------------------


def _with_external_data(files: dict[str, Path], folder: Path, location: str) -> Path:
    """The ONNX model with its weights in an external file, then pointed at ``location``."""
    folder.mkdir()
    proto = onnx.load(str(files["onnx"]))
    path = folder / "m.onnx"
    onnx.save_model(proto, str(path), save_as_external_data=True, location="weights.bin", size_threshold=0)
    proto = onnx.load(str(path), load_external_data=False)
    for tensor in proto.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save(proto, str(path))
    return path


@pytest.mark.parametrize("location", ["../outside.bin", "/etc/passwd", "missing.bin"])
@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_external_data_outside_the_folder_is_refused_in_one_line(
    location: str, backend: str, files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "outside.bin").write_bytes(b"\0" * 4096)
    path = _with_external_data(files, tmp_path / "model", location)
    error = one_line_value_error(load_model, path, backend)
    assert ("outside the model's folder" if location != "missing.bin" else "does not exist") in error, error
    assert main(["predict", str(_image(tmp_path)), "--checkpoint", str(path), "--backend", backend]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_external_data_beside_the_file_loads(files: dict[str, Path], tmp_path: Path) -> None:
    path = _with_external_data(files, tmp_path / "model", "weights.bin")
    x = torch.randn(2, 3, IMG, IMG)
    torch.testing.assert_close(load_model(path, "onnxruntime")(x), load_model(files["onnx"], "onnxruntime")(x))


def test_an_engine_that_refuses_a_file_says_so_in_one_line(files: dict[str, Path], tmp_path: Path) -> None:
    # Past cspnet's own checks (the engine is built directly): onnxruntime's refusal, one line.
    path = _with_external_data(files, tmp_path / "model", "../outside.bin")
    (tmp_path / "outside.bin").write_bytes(b"\0" * 4096)
    error = one_line_value_error(OnnxRuntimeEngine, path)
    assert error.startswith(f"{path}: onnxruntime cannot load it: "), error


# --- inputs ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["torch", "onnxruntime", "openvino"])
def test_every_engine_takes_float64_and_half_inputs(backend: str, files: dict[str, Path]) -> None:
    model = load_model(files["torchscript" if backend == "torch" else "onnx"], backend)
    x = torch.randn(2, 3, IMG, IMG, generator=torch.Generator().manual_seed(0))
    expected = model(x)
    torch.testing.assert_close(model(x.double()), expected)
    torch.testing.assert_close(model(x.double().numpy()), expected)  # NumPy's default dtype
    torch.testing.assert_close(model(x.half()), expected, atol=1e-2, rtol=1e-2)
    error = one_line_value_error(model, x.long())
    assert "torch.int64" in error and "takes float (N, C, H, W)" in error


def test_int8_files_are_checked_by_what_int8_can_promise(tmp_path: Path) -> None:
    """An int8 softmax rounds each probability to 1/255: its rows need not sum to 1, its values stay
    in [0, 1]. A genuine int8 file with probabilities loads on both engines; an int8 graph of logits
    labelled ``probabilities`` is still refused."""
    torch.manual_seed(0)
    model = create_model("cspdensenet_bc40", num_classes=10)
    options = {"int8_calibration": "digits", "calibration_images": 16, "agreement_images": 16}
    genuine = export_model(model, "onnx", tmp_path / "p8.onnx", IMG, preprocessing_in_graph=True, **options).path
    for backend in ("onnxruntime", "openvino"):
        out = load_model(genuine, backend)(torch.zeros(2, IMG, IMG, 3, dtype=torch.uint8))
        assert out.shape == (2, 10) and bool((out >= 0).all()) and bool((out <= 1).all())
    logits = export_model(model, "onnx", tmp_path / "l8.onnx", IMG, info=INFO, **options).path
    edited = with_onnx_metadata(logits, tmp_path / "l8_edited.onnx", {"output": "probabilities"})
    assert "not probabilities" in one_line_value_error(load_model, edited, "onnxruntime")
