"""Malformed weight files: ``create_model(pretrained=FILE)`` and the loaders raise ``CheckpointError`` only.

Generated with hypothesis: state dicts of a tiny model with one or more corruptions (keys that are
not strings, 0-d / 1-d / mis-shaped tensors, meta / sparse / quantized tensors, NaN and infinity,
integer / complex / bool dtypes, non-tensor values, missing and extra keys, nested wrappers), random
bytes, truncated files, and darknet files of random length. Whatever the input, the load either
succeeds or raises ``CheckpointError``; a few properties are asserted exactly.
"""

from __future__ import annotations

import logging
import struct
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cspnet
from cspnet.convert import CheckpointError, load_checkpoint, load_weights

TINY = {"block_config": (1, 1, 1)}
MODEL = "cspdensenet_bc40"
DARKNET = {"depths": (1, 1, 1, 1, 1), "stem_chs": 8, "out_chs": (8, 16, 16, 16, 32)}
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def tiny(num_classes: int = 3) -> torch.nn.Module:
    return cspnet.create_model(MODEL, num_classes=num_classes, **TINY)


def reference_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {k: v.clone() for k, v in tiny().state_dict().items()}


def _meta(t: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(t, device="meta")


CORRUPTIONS = {
    "int key": lambda s, k: {**{kk: v for kk, v in s.items() if kk != k}, 7: s[k]},
    "tuple key": lambda s, k: {**{kk: v for kk, v in s.items() if kk != k}, ("a", 1): s[k]},
    "0-d": lambda s, k: {**s, k: torch.tensor(1.0)},
    "1-d": lambda s, k: {**s, k: s[k].flatten()},
    "reshaped": lambda s, k: {**s, k: torch.zeros(3, 1, 2)},
    "empty": lambda s, k: {**s, k: torch.zeros(0)},
    "meta": lambda s, k: {**s, k: _meta(s[k])},
    "sparse": lambda s, k: {**s, k: s[k].to_sparse()} if s[k].dim() else s,
    "nan": lambda s, k: {**s, k: torch.full_like(s[k], float("nan"))} if s[k].is_floating_point() else s,
    "inf": lambda s, k: {**s, k: torch.full_like(s[k], float("-inf"))} if s[k].is_floating_point() else s,
    "int32": lambda s, k: {**s, k: s[k].to(torch.int32)},
    "bool": lambda s, k: {**s, k: s[k].bool()},
    "complex": lambda s, k: {**s, k: s[k].to(torch.complex64)},
    "fp16": lambda s, k: {**s, k: s[k].half()},  # allowed: cast to the model's dtype
    "string value": lambda s, k: {**s, k: "weights"},
    "list value": lambda s, k: {**s, k: [1.0, 2.0]},
    "missing": lambda s, k: {kk: v for kk, v in s.items() if kk != k},
    "extra": lambda s, k: {**s, k + ".extra": torch.zeros(2)},
    "head 1-d": lambda s, k: {**s, "head.fc.weight": torch.zeros(5)},
    "head 0-d": lambda s, k: {**s, "head.fc.weight": torch.tensor(0.5), "head.fc.bias": torch.tensor(0.5)},
    "head 3-d": lambda s, k: {**s, "head.fc.weight": torch.zeros(5, 2, 2)},
    "quantized": lambda s, k: {**s, k: torch.quantize_per_tensor(s[k].float(), 0.1, 0, torch.qint8)}
    if s[k].is_floating_point()
    else s,
}

WRAPPERS = {
    "plain": lambda s: s,
    "state_dict": lambda s: {"state_dict": s, "epoch": 3},
    "module prefix": lambda s: {f"module.{k}" if isinstance(k, str) else k: v for k, v in s.items()},
    "nested twice": lambda s: {"model": {"state_dict": s}},
    "list": lambda s: [s],
    "training-like": lambda s: {"model_name": MODEL, "state_dict": {f"model.{k}": v for k, v in s.items()
                                                                    if isinstance(k, str)}},
}


def assert_only_checkpoint_error(load) -> str:
    try:
        load()
    except CheckpointError as exc:
        return str(exc)
    return ""


@pytest.mark.filterwarnings("ignore::UserWarning")  # torch's deprecation notices for quantized/typed storages
@FUZZ
@given(
    corruptions=st.lists(st.sampled_from(sorted(CORRUPTIONS)), min_size=1, max_size=3),
    key_index=st.integers(0, 10_000),
    wrapper=st.sampled_from(sorted(WRAPPERS)),
)
def test_malformed_state_dicts_raise_only_checkpoint_error(tmp_path: Path, corruptions, key_index, wrapper) -> None:
    state: dict = reference_state()
    for j, name in enumerate(corruptions):
        keys = [k for k in state if isinstance(k, str)]
        try:
            state = CORRUPTIONS[name](state, keys[(key_index + 7 * j) % len(keys)])
        except RuntimeError:  # torch cannot make this one of an already corrupted tensor: no such file exists
            pass
    path = tmp_path / "w.pth"
    torch.save(WRAPPERS[wrapper](state), path)
    assert_only_checkpoint_error(lambda: cspnet.create_model(MODEL, num_classes=3, pretrained=path, **TINY))
    # The API that takes a dict directly is as strict.
    assert_only_checkpoint_error(lambda: load_weights(tiny(), state, source="dict"))


@FUZZ
@given(data=st.binary(max_size=2048), suffix=st.sampled_from([".pth", ".safetensors", ".weights", ".bin"]))
def test_random_bytes_raise_only_checkpoint_error(tmp_path: Path, data: bytes, suffix: str) -> None:
    path = tmp_path / f"w{suffix}"
    path.write_bytes(data)
    with pytest.raises(CheckpointError) as caught:
        cspnet.create_model(MODEL, num_classes=3, pretrained=path, **TINY)
    # (a DenseNet has no darknet layout: that error names the model, not the file)
    _assert_one_plain_line(str(caught.value), path if suffix != ".weights" else None)


def _assert_one_plain_line(message: str, path: Path | None) -> None:
    """One line that names the file, without torch's advice to load it with weights_only=False."""
    assert "\n" not in message and (path is None or str(path) in message) and len(message) < 400, message
    assert "weights_only" not in message and "Re-running" not in message, message


class _Payload:
    """A pickle that runs ``os.system`` on load: it must be refused, never run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        import os

        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
@pytest.mark.parametrize("suffix", [".pth", ".pt", ".ckpt", ".bin"])
def test_malicious_pickles_are_refused_in_one_line(tmp_path: Path, writer: str, suffix: str) -> None:
    import pickle

    from cspnet.convert import load_torch_file, read_state_dict

    marker = tmp_path / "pwned"
    path = tmp_path / f"evil{suffix}"
    if writer == "torch.save":
        torch.save({"state_dict": {"w": torch.zeros(1)}, "x": _Payload(marker)}, path)
    else:
        path.write_bytes(pickle.dumps(_Payload(marker)))
    for load in (lambda: load_torch_file(path, "checkpoint"), lambda: read_state_dict(path),
                 lambda: cspnet.create_model(MODEL, pretrained=path, **TINY)):  # fmt: skip
        with pytest.raises(CheckpointError, match="refused") as caught:
            load()
        _assert_one_plain_line(str(caught.value), path)
    assert not marker.exists()


@pytest.mark.parametrize("suffix", [".pth", ".pt", ".ckpt"])
def test_a_zero_byte_file_says_it_is_empty(tmp_path: Path, suffix: str, capsys: pytest.CaptureFixture[str]) -> None:
    from cspnet.cli.main import main
    from cspnet.convert import read_state_dict

    path = tmp_path / f"w{suffix}"
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"the weight file is empty \(0 bytes\)"):
        read_state_dict(path)
    argv = ["export", MODEL, "--checkpoint", str(path), "--format", "onnx", "--output", str(tmp_path / "m.onnx")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"cspnet export: error: {path}: the weight file is empty (0 bytes)", err


def test_one_reader_per_suffix_and_one_converter_per_layout(monkeypatch: pytest.MonkeyPatch) -> None:
    import cspnet.convert.checkpoint as checkpoint

    monkeypatch.setattr(checkpoint, "_FILE_READERS", dict(checkpoint._FILE_READERS))
    monkeypatch.setattr(checkpoint, "_CONVERTERS", list(checkpoint._CONVERTERS))
    current = checkpoint._FILE_READERS[".weights"]

    def other(path: Path, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        return {}

    with pytest.raises(ValueError, match=r"a reader for \.weights files is already registered .* refusing a second one"):
        checkpoint.register_file_reader(".WEIGHTS", other)
    assert checkpoint._FILE_READERS[".weights"] is current  # import order decides nothing
    checkpoint.register_file_reader(".weights", current)  # the same reader again (a module reloaded) is fine
    checkpoint.register_file_reader(".weights", other, replaces=current)  # a deliberate take-over
    assert checkpoint._FILE_READERS[".weights"] is other
    for native in (".safetensors", ".pt", ".pth"):
        with pytest.raises(ValueError, match="read by cspnet itself"):
            checkpoint.register_file_reader(native, other)
    with pytest.raises(ValueError, match="a converter named 'timm CSP' is already registered"):
        checkpoint.register_converter(checkpoint.Converter("timm CSP", lambda s, m: False, lambda s, m: s))


@FUZZ
@given(cut=st.floats(0.0, 0.999))
def test_truncated_files_raise_checkpoint_error(tmp_path: Path, cut: float) -> None:
    whole = tmp_path / "whole.pth"
    if not whole.exists():
        torch.save(reference_state(), whole)
    raw = whole.read_bytes()
    path = tmp_path / "cut.pth"
    path.write_bytes(raw[: int(len(raw) * cut)])
    with pytest.raises(CheckpointError):
        cspnet.create_model(MODEL, num_classes=3, pretrained=path, **TINY)


@pytest.mark.parametrize(
    ("corruption", "message"),
    [
        ("int key", "key 7 is not a string"),
        ("tuple key", "key ('a', 1) is not a string"),
        ("meta", "is a meta tensor"),
        ("sparse", "only dense tensors"),
        ("nan", "NaN or infinite values in"),
        ("inf", "NaN or infinite values in"),
        ("int32", "wrong kind of dtype"),
        ("complex", "wrong kind of dtype"),
        ("head 1-d", "head.fc.weight (5,) vs model (3, "),
        ("head 0-d", "head.fc.weight () vs model (3, "),
        ("quantized", "quantized tensor"),
    ],
)
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_each_problem_is_named(tmp_path: Path, corruption: str, message: str) -> None:
    state = CORRUPTIONS[corruption](reference_state(), "stem.conv1.conv.weight")
    path = tmp_path / "w.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="w.pth") as info:
        cspnet.create_model(MODEL, num_classes=3, pretrained=path, **TINY)
    assert message in str(info.value)


def test_half_precision_files_are_cast(tmp_path: Path) -> None:
    state = reference_state()
    path = tmp_path / "half.pth"
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, path)
    model = cspnet.create_model(MODEL, num_classes=3, pretrained=path, **TINY)
    weight = model.stem.conv1.conv.weight
    assert weight.dtype == torch.float32 and torch.equal(weight, state["stem.conv1.conv.weight"].half().float())


def test_a_classifier_of_another_size_is_dropped_with_a_warning(tmp_path: Path, caplog) -> None:
    path = tmp_path / "w.pth"
    torch.save(reference_state(), path)
    with caplog.at_level(logging.WARNING, logger="cspnet.convert.checkpoint"):
        model = cspnet.create_model(MODEL, num_classes=7, pretrained=path, **TINY)
    assert model.head.fc.out_features == 7
    assert "classifier not loaded: the checkpoint has 3 classes, the model 7" in caplog.text
    # A headless model (pooled features) takes the same file, dropping the classifier.
    with caplog.at_level(logging.WARNING, logger="cspnet.convert.checkpoint"):
        cspnet.create_model(MODEL, num_classes=0, pretrained=path, **TINY)
    assert "the checkpoint has 3 classes, the model 0" in caplog.text


# -- darknet .weights ----------------------------------------------------------------------------
def darknet_model(num_classes: int = 3) -> torch.nn.Module:
    return cspnet.create_model("cspdarknet53_paper", num_classes=num_classes, **DARKNET)


def darknet_file(path: Path, floats: int, header: tuple[int, int, int] = (0, 2, 5)) -> None:
    major, minor, revision = header
    seen = struct.pack("<q", 0) if major * 10 + minor >= 2 else struct.pack("<i", 0)
    values = torch.randn(floats, generator=torch.Generator().manual_seed(floats)) * 0.1
    path.write_bytes(struct.pack("<3i", major, minor, revision) + seen + values.numpy().tobytes())


def backbone_floats() -> int:
    from cspnet.convert.darknet import darknet_layers, layer_floats

    return sum(layer_floats(layer) for layer in darknet_layers(darknet_model()))


@FUZZ
@given(
    extra=st.integers(-200, 400),
    header=st.tuples(st.integers(-3, 3), st.integers(-3, 3), st.integers(0, 3)),
    tail=st.binary(max_size=3),
)
def test_darknet_files_of_any_length_raise_only_checkpoint_error(tmp_path: Path, extra, header, tail) -> None:
    path = tmp_path / "d.weights"
    darknet_file(path, max(0, backbone_floats() + extra), header)
    path.write_bytes(path.read_bytes() + tail)
    assert_only_checkpoint_error(lambda: load_checkpoint(darknet_model(), path))


def test_darknet_classifier_floats_that_are_dropped_are_a_warning(tmp_path: Path, caplog) -> None:
    path = tmp_path / "d.weights"
    feat = DARKNET["out_chs"][-1]
    darknet_file(path, backbone_floats() + 1000 * (feat + 1))  # a 1000-class classifier
    with caplog.at_level(logging.WARNING):
        model = cspnet.create_model("cspdarknet53_paper", num_classes=3, pretrained=path, **DARKNET)
    assert model.head.fc.out_features == 3
    assert "classifier not loaded: the checkpoint has 1000 classes, the model 3" in caplog.text


@pytest.mark.parametrize("kind", ["malicious", "empty", "truncated", "text"])
@pytest.mark.parametrize("command", ["predict", "eval", "export"])
def test_every_command_says_what_is_wrong_with_a_bad_torch_file(
    kind: str, command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cspnet.cli.main import main

    marker, path = tmp_path / "pwned", tmp_path / "model.pt"
    if kind == "malicious":
        torch.save({"model_name": MODEL, "state_dict": {}, "x": _Payload(marker)}, path)
    elif kind == "truncated":
        torch.save(reference_state(), path)
        path.write_bytes(path.read_bytes()[:200])
    else:
        path.write_bytes(b"" if kind == "empty" else b"model weights\n")
    argv = {
        "predict": ["predict", str(tmp_path / "x.png"), "--checkpoint", str(path)],
        "eval": ["eval", "--checkpoint", str(path), "--output", str(tmp_path / "eval")],
        "export": ["export", MODEL, "--checkpoint", str(path), "--format", "onnx", "--output", str(tmp_path / "m.onnx")],
    }[command]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    expected = {"malicious": "refused: the", "empty": "is empty (0 bytes)", "truncated": "truncated",
                "text": "PyTorch"}[kind]  # fmt: skip  (not a PyTorch file, or not plain PyTorch data)
    assert len(err.splitlines()) == 1 and expected in err and str(path) in err, err
    assert "weights_only" not in err and not marker.exists()
