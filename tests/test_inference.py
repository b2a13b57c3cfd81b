"""cspnet.inference: every engine reproduces PyTorch, self-describing files, int8 on the digits, errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import cspnet
from cspnet.cli.main import main
from cspnet.cpu import has_native_bf16
from cspnet.data import load_digits_split
from cspnet.export import export_model
from cspnet.inference import (
    BACKENDS,
    BackendNotInstalledError,
    ModelInfo,
    load_model,
    onnxruntime_session_options,
    physical_cores,
    read_onnx_info,
)

ENGINES = ("onnxruntime", "openvino")
# One model of each family: DenseNet-style dense stages, ResNet-like and Darknet-like stage nets, PeleeNet.
FAMILY_MODELS = ("cspdensenet_bc40", "cspresnet50", "cspdarknet53", "csppeleenet")
IMG = 64
DIGITS_MEAN, DIGITS_STD = (0.19,) * 3, (0.33,) * 3


def relative(reference: torch.Tensor, other: torch.Tensor) -> float:
    return ((reference - other).abs().max() / reference.abs().max()).item()


def randomize_norms(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Batch norms with random statistics, so that folding them into convs is really exercised."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=gen) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=gen) - 0.5)
    return model.eval()


# --- every engine gives PyTorch's outputs ------------------------------------------------------------


@pytest.mark.parametrize("name", FAMILY_MODELS)
def test_every_backend_gives_the_torch_outputs(name: str, tmp_path: Path) -> None:
    model = randomize_norms(cspnet.create_model(name, num_classes=10))
    weights = tmp_path / "w.safetensors"
    save_file(model.state_dict(), str(weights))
    onnx_file = export_model(model, "onnx", tmp_path / "m.onnx", IMG).path
    x = torch.randn(3, 3, IMG, IMG, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(x)
    runs = {
        "torch": load_model(name, "torch", weights=weights, num_classes=10, img_size=IMG),
        **{engine: load_model(onnx_file, engine) for engine in ENGINES},
    }
    assert set(runs) == set(BACKENDS)
    for backend, loaded in runs.items():
        got = loaded(x)
        assert got.shape == (3, 10) and got.dtype == torch.float32
        assert relative(expected, got) < 1e-4, backend


def test_a_registered_model_runs_on_an_engine_without_an_export_by_hand() -> None:
    def load(backend: str, **options: object):
        torch.manual_seed(0)  # the same random weights for every engine
        return load_model("densenet_bc40", backend, num_classes=5, img_size=32, **options)  # type: ignore[arg-type]

    x = torch.randn(5, 3, 32, 32)
    expected = load("torch")(x)
    assert relative(expected, load("onnxruntime")(x)) < 1e-4
    # batch_size > 1: OpenVINO compiles for throughput and splits a batch between its streams.
    throughput = load("openvino", batch_size=4)
    assert throughput.engine.performance_hint == "THROUGHPUT"
    assert relative(expected, throughput(x)) < 1e-4
    assert relative(expected[:1], throughput(x[:1])) < 1e-4
    assert load("openvino").engine.performance_hint == "LATENCY"


def test_engines_are_configured_as_their_authors_recommend() -> None:
    import onnxruntime as ort

    options = onnxruntime_session_options()
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert options.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert options.intra_op_num_threads == physical_cores()
    assert 1 <= physical_cores() <= len(__import__("os").sched_getaffinity(0))
    assert onnxruntime_session_options(threads=1).intra_op_num_threads == 1


# --- self-describing files -----------------------------------------------------------------------------


INFO = ModelInfo("cspdensenet_bc40", ("zéro", "one", "two"), img_size=32, mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6))


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_metadata_round_trip(fmt: str, tmp_path: Path) -> None:
    model = cspnet.create_model("cspdensenet_bc40", num_classes=3)
    path = export_model(model, fmt, tmp_path / f"m.{fmt}", 32, info=INFO).path
    loaded = load_model(path, "torch" if fmt == "torchscript" else "onnxruntime")
    assert loaded.info == INFO
    if fmt == "onnx":
        import onnxruntime as ort

        assert read_onnx_info(path) == INFO
        # What a deploying user reads without cspnet: plain strings, lists as JSON.
        meta = ort.InferenceSession(str(path)).get_modelmeta().custom_metadata_map
        assert json.loads(meta["class_names"]) == ["zéro", "one", "two"] and meta["img_size"] == "32"
        assert json.loads(meta["mean"]) == [0.1, 0.2, 0.3] and meta["resize"] == "stretch_bilinear"
        assert load_model(path, "openvino").info == INFO


def test_preprocessing_in_graph_equals_the_python_preprocessing(tmp_path: Path) -> None:
    model = randomize_norms(cspnet.create_model("cspdensenet_bc40", num_classes=3))
    for fmt in ("onnx", "torchscript"):
        result = export_model(model, fmt, tmp_path / f"m.{fmt}", 32, info=INFO, preprocessing_in_graph=True)
        assert result.max_rel_diff < 1e-4  # export's own tolerance: float rounding depends on the weights drawn
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = model(INFO.preprocess(images)).softmax(dim=1)
    for backend, path in (("onnxruntime", "m.onnx"), ("openvino", "m.onnx"), ("torch", "m.torchscript")):
        loaded = load_model(tmp_path / path, backend)
        assert loaded.info.input_format == "uint8_nhwc" and loaded.info.output == "probabilities"
        batch = loaded.preprocess(images)
        assert batch.dtype == torch.uint8 and batch.shape == (4, 32, 32, 3)
        # Probabilities: an absolute tolerance (a near-zero probability has no meaningful relative error).
        torch.testing.assert_close(loaded(batch), expected, rtol=0, atol=1e-5)
        torch.testing.assert_close(loaded.logits(batch).softmax(1), expected, rtol=0, atol=1e-5)


# --- int8 on the digits ----------------------------------------------------------------------------


DIGITS_SIDE = 8  # the digits' own resolution: a real classifier in a few seconds of training


@pytest.fixture(scope="module")
def digits_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A `cspnet train`-format checkpoint of a digits classifier (~98.6 % top-1), trained here.

    Three epochs of SGD with a one-cycle schedule at 8x8: real weights and real decision margins,
    which is what int8 has to keep (a randomly initialised model says nothing about accuracy).
    """
    torch.manual_seed(0)
    train, _ = load_digits_split(DIGITS_SIDE)
    info = ModelInfo("cspdensenet_bc40", tuple(train.classes), DIGITS_SIDE, DIGITS_MEAN, DIGITS_STD)
    model = cspnet.create_model("cspdensenet_bc40", num_classes=10)
    x, y = info.preprocess(train.images), train.targets
    epochs, batch = 3, 64
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 0.2, total_steps=epochs * -(-len(y) // batch))
    for _ in range(epochs):
        for idx in torch.randperm(len(y)).split(batch):
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    path = tmp_path_factory.mktemp("digits") / "best.ckpt"
    torch.save(
        {
            "model_name": "cspdensenet_bc40", "num_classes": 10, "model_overrides": {}, "class_names": list(train.classes),
            "img_size": DIGITS_SIDE, "mean": list(DIGITS_MEAN), "std": list(DIGITS_STD),
            "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
        },
        path,
    )  # fmt: skip
    return path


def top1(loaded, images: torch.Tensor, targets: torch.Tensor) -> float:
    return 100 * float((loaded(loaded.preprocess(images)).argmax(1) == targets).float().mean())


def test_int8_keeps_the_digits_accuracy(digits_checkpoint: Path, tmp_path: Path) -> None:
    import onnx

    from cspnet.trained import load_trained

    _, val = load_digits_split(DIGITS_SIDE)
    trained = load_trained(digits_checkpoint)
    fp32 = load_model(digits_checkpoint, "torch")
    reference = top1(fp32, val.images, val.targets)
    assert reference > 95  # a real classifier, not chance
    out = tmp_path / "int8.onnx"
    info = fp32.info
    result = export_model(trained.model, "onnx", out, DIGITS_SIDE, info=info, int8_calibration="digits",
                          calibration_images=64)  # fmt: skip
    assert result.precision == "int8" and result.top1_agreement is not None and result.top1_agreement >= 0.97
    assert result.file_bytes < 0.6 * result.fp32_file_bytes  # int8 weights: a quarter, plus scales and graph
    ops = {node.op_type for node in onnx.load(str(out)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # QDQ format
    for engine in ENGINES:
        loaded = load_model(out, engine)
        assert loaded.precision == "int8" and loaded.info.class_names == info.class_names
        assert abs(top1(loaded, val.images, val.targets) - reference) <= 0.5, engine


def test_int8_straight_from_a_checkpoint(digits_checkpoint: Path) -> None:
    _, val = load_digits_split(DIGITS_SIDE)
    reference = top1(load_model(digits_checkpoint), val.images, val.targets)
    quantized = load_model(digits_checkpoint, "onnxruntime", precision="int8", calibration_data="digits",
                           calibration_images=32)  # fmt: skip
    assert quantized.precision == "int8"
    assert abs(top1(quantized, val.images, val.targets) - reference) <= 1.0  # fewer calibration images here


def test_int8_calibrates_on_an_image_folder(tmp_path: Path) -> None:
    from PIL import Image

    from cspnet.export.quantize import sample_images

    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (tmp_path / "data" / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(tmp_path / "data" / cls / f"{i}.png")
    calibration = sample_images(tmp_path / "data", 16, 4)
    check = sample_images(tmp_path / "data", 16, 4, held_out=True, calibration_count=4)
    assert calibration.shape == (4, 3, 16, 16) and check.shape == (2, 3, 16, 16)  # the other 2 of 6 images
    model = cspnet.create_model("densenet_bc40", num_classes=2)
    result = export_model(model, "onnx", tmp_path / "q.onnx", 16, int8_calibration=tmp_path / "data",
                          calibration_images=4)  # fmt: skip
    assert result.agreement_images == 2 and load_model(result.path, "onnxruntime").precision == "int8"


# --- one-line errors -------------------------------------------------------------------------------


def one_error_line(capsys: pytest.CaptureFixture[str], command: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(f"cspnet {command}: error:"), err
    return err


def test_a_missing_backend_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, digits_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` now raises ImportError
    with pytest.raises(BackendNotInstalledError, match=r'pip install "cspnet\[openvino\]"'):
        load_model("densenet_bc40", "openvino")
    argv = ["predict", str(Path(__file__)), "--checkpoint", str(digits_checkpoint), "--backend", "openvino"]
    assert main(argv) == 2
    assert 'pip install "cspnet[openvino]"' in one_error_line(capsys, "predict")
    assert main(["benchmark", "densenet_bc40", "--backend", "torch", "openvino"]) == 2
    assert "cspnet[openvino]" in one_error_line(capsys, "benchmark")


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("m.onnx", b"not a model", "is not an ONNX model"),
        # what is wrong with a PyTorch file is said first (load_torch_file) ...
        ("m.pt", b"not a model", "not plain PyTorch data"),
        ("m.ckpt", b"", "the checkpoint is empty"),
        # ... and a readable one that is no `cspnet train` checkpoint is named as such
        ("w.pt", b"GOOD", "is not a `cspnet train` checkpoint, an .onnx file or a TorchScript archive"),
    ],
)
def test_a_file_that_is_not_a_model(
    name: str, content: bytes, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / name
    if content == b"GOOD":
        torch.save({"w": torch.zeros(1)}, path)
    else:
        path.write_bytes(content)
    backend = "onnxruntime" if name.endswith(".onnx") else "torch"
    with pytest.raises(ValueError, match=message):
        load_model(path, backend)
    assert main(["eval", "--checkpoint", str(path), "--backend", backend]) == 2
    assert message in one_error_line(capsys, "eval")


def test_file_and_backend_mismatches_are_errors(tmp_path: Path) -> None:
    model = cspnet.create_model("densenet_bc40", num_classes=3)
    onnx_file = export_model(model, "onnx", tmp_path / "m.onnx", 32).path
    with pytest.raises(ValueError, match="run it with backend 'onnxruntime' or 'openvino'"):
        load_model(onnx_file, "torch")
    with pytest.raises(ValueError, match="does not run bf16"):
        load_model(onnx_file, "onnxruntime", precision="bf16")
    with pytest.raises(ValueError, match="int8 needs calibration images"):
        load_model(onnx_file, "onnxruntime", precision="int8")
    with pytest.raises(FileNotFoundError, match="model file not found"):
        load_model(tmp_path / "missing.onnx", "onnxruntime")


def test_a_mismatched_input_size_is_a_one_line_error(
    digits_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    onnx_file = export_model(cspnet.create_model("densenet_bc40", num_classes=3), "onnx", tmp_path / "m.onnx", 32).path
    loaded = load_model(onnx_file, "onnxruntime")
    with pytest.raises(ValueError, match=r"\(2, 3, 64, 64\) does not fit densenet_bc40.*\(N, 3, 32, 32\)"):
        loaded(torch.randn(2, 3, 64, 64))
    with pytest.raises(ValueError, match="takes float"):
        loaded(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="takes 32x32 images, not img_size 64"):
        load_model(onnx_file, "onnxruntime", img_size=64)
    out = tmp_path / "x.onnx"
    argv = ["export", "--checkpoint", str(digits_checkpoint), "--format", "onnx", "--output", str(out)]
    assert main([*argv, "--int8"]) == 2
    assert "--int8 needs --calibration-data" in one_error_line(capsys, "export")


def test_bf16_without_native_support_is_detected(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 fma\n")
    assert has_native_bf16(cpuinfo) is False
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n")
    assert has_native_bf16(cpuinfo) is True
    assert has_native_bf16(tmp_path / "missing") is None


# --- the CLI on every backend -------------------------------------------------------------------------


@pytest.mark.slow  # ten CLI runs, five of them exporting and compiling on the way
def test_eval_and_predict_give_the_same_answers_on_every_backend(
    digits_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from PIL import Image

    _, val = load_digits_split(64)
    image = tmp_path / "digit.png"
    Image.fromarray(val.images[0].permute(1, 2, 0).numpy()).save(image)
    exported = tmp_path / "model.onnx"
    argv = ["export", "--checkpoint", str(digits_checkpoint), "--format", "onnx", "--output", str(exported),
            "--preprocessing-in-graph"]  # fmt: skip
    assert main(argv) == 0
    assert "preprocessing in graph" in capsys.readouterr().out
    evals, predictions = {}, {}
    for source, backend in [(digits_checkpoint, b) for b in BACKENDS] + [(exported, b) for b in ENGINES]:
        key = f"{Path(source).suffix}-{backend}"
        assert main(["eval", "--checkpoint", str(source), "--backend", backend, "--output", str(tmp_path / key)]) == 0
        evals[key] = json.loads((tmp_path / key / "eval.json").read_text())
        assert main(["predict", str(image), "--checkpoint", str(source), "--backend", backend, "--json"]) == 0
        out = capsys.readouterr().out
        predictions[key] = json.loads(out[out.index("[") :])[0]["predictions"]
    first = evals[".ckpt-torch"]
    for key, result in evals.items():
        assert result["backend"] == key.split("-")[1]
        assert result["top1"] == first["top1"] and result["loss"] == pytest.approx(first["loss"], abs=1e-4), key
        assert [p["label"] for p in predictions[key]] == [p["label"] for p in predictions[".ckpt-torch"]], key


# --- docs/deployment.md runs ------------------------------------------------------------------------


DOCS = Path(__file__).parent.parent / "docs"


@pytest.mark.parametrize("engine", ENGINES)
def test_the_deployment_examples_run(
    engine: str, digits_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    import re

    from cspnet.data import read_image

    text = (DOCS / "deployment.md").read_text()
    (code,) = re.findall(rf"```python\n(# example: {engine}\n.*?)```", text, flags=re.S)
    (tmp_path / "docs" / "img").mkdir(parents=True)
    image = tmp_path / "docs" / "img" / "digit7.png"
    image.write_bytes((DOCS / "img" / "digit7.png").read_bytes())
    for name, extra in (("model.onnx", []), ("model_preprocessed.onnx", ["--preprocessing-in-graph"])):
        argv = ["export", "--checkpoint", str(digits_checkpoint), "--format", "onnx", "--output", str(tmp_path / name)]
        assert main([*argv, *extra]) == 0
    capsys.readouterr()
    monkeypatch.chdir(tmp_path)
    exec(compile(code, f"deployment.md ({engine} example)", "exec"), {"__name__": "__main__"})
    label, probability = capsys.readouterr().out.split()
    model = load_model(digits_checkpoint)
    expected = model.probabilities(model.preprocess(read_image(image, model.info.img_size)[None]))[0]
    assert label == model.info.class_names[int(expected.argmax())]
    assert float(probability) == pytest.approx(float(expected.max()), abs=1e-3)
