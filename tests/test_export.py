"""ONNX / TorchScript export: round trips at another batch size, the CLI and its errors."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import cspnet
from cspnet.cli.main import main
from cspnet.export import export_model, load_runner
from cspnet.models.backbone import count_params

IMG = 64


def _smallest_model_of_each_family() -> list[str]:
    smallest: dict[object, tuple[int, str]] = {}
    with torch.device("meta"):
        for name in cspnet.list_models(task="classification"):
            builder = cspnet.get_model_entry(name).builder
            params = count_params(cspnet.create_model(name))
            if builder not in smallest or params < smallest[builder][0]:
                smallest[builder] = (params, name)
    return sorted(name for _, name in smallest.values())


FAMILIES = _smallest_model_of_each_family()


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("name", FAMILIES)
def test_export_round_trip_at_another_batch_size(name: str, fmt: str, tmp_path: Path) -> None:
    model = cspnet.create_model(name, num_classes=10)
    result = export_model(model, fmt, tmp_path / f"model.{fmt}", IMG)
    assert result.check_batch != result.export_batch
    assert result.max_rel_diff < 1e-4
    runner = load_runner(result.path, fmt)
    x = torch.randn(5, 3, IMG, IMG)
    with torch.no_grad():
        expected = model.eval()(x)
    got = runner(x)
    assert got.shape == (5, 10)
    assert ((got - expected).abs().max() / expected.abs().max()).item() < 1e-4


def test_onnx_input_has_a_symbolic_batch_axis(tmp_path: Path) -> None:
    import onnx

    export_model(cspnet.create_model("cspdensenet_bc100", num_classes=10), "onnx", tmp_path / "m.onnx", 32)
    graph = onnx.load(str(tmp_path / "m.onnx")).graph
    dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, 32, 32]


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert err.startswith("cspnet export: error:")
    return err


def test_cli_export_writes_and_checks_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "m.pt"
    args = ["export", "cspdensenet_bc100", "--format", "torchscript", "--output", str(out), "--num-classes", "3"]
    assert main(args) == 0
    assert "checked at batch 3" in capsys.readouterr().out
    assert load_runner(out, "torchscript")(torch.randn(4, 3, 32, 32)).shape == (4, 3)


def test_cli_export_reads_a_training_checkpoint_and_ships_its_ema_weights(tmp_path: Path) -> None:
    # The fields `cspnet train` writes (training/callbacks.py): the model's identity at the top level,
    # the trained weights under Lightning's "model." prefix and the EMA copy that eval/predict use.
    trained = cspnet.create_model("cspdensenet_bc100", num_classes=7, partial_ratio=0.25)
    ema = cspnet.create_model("cspdensenet_bc100", num_classes=7, partial_ratio=0.25)
    ckpt = tmp_path / "last.ckpt"
    torch.save(
        {
            "model_name": "cspdensenet_bc100", "num_classes": 7, "model_overrides": {"partial_ratio": 0.25},
            "class_names": [str(i) for i in range(7)], "img_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3,
            "state_dict": {f"model.{k}": v for k, v in trained.state_dict().items()},
            "ema_state_dict": {"module": ema.state_dict()},
        },
        ckpt,
    )  # fmt: skip
    out = tmp_path / "m.onnx"
    assert main(["export", "--checkpoint", str(ckpt), "--format", "onnx", "--output", str(out)]) == 0
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = ema.eval()(x)
    torch.testing.assert_close(load_runner(out, "onnx")(x), expected, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize(
    "extra,message",
    [
        (["cspdensenet_bc100", "--format", "tflite"], "--format 'tflite' is not supported"),
        (["no_such_model", "--format", "onnx"], "unknown model 'no_such_model'"),
        (["--format", "onnx"], "name the model"),
        (["cspdensenet_bc100", "--format", "onnx", "--img-size", "0"], "--img-size 0 is invalid"),
        (["cspdensenet_bc100", "--format", "onnx", "--num-classes", "0"], "--num-classes 0 is invalid"),
    ],
)
def test_cli_export_errors(
    extra: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["export", *extra, "--output", str(tmp_path / "m.onnx")]) == 2
    assert message in _one_error_line(capsys)
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("kind", ["other_model", "missing", "not_weights"])
def test_cli_export_rejects_a_wrong_checkpoint(kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = tmp_path / "w.safetensors"
    if kind == "other_model":
        save_file(cspnet.create_model("densenet_bc100").state_dict(), str(ckpt))
    elif kind == "not_weights":
        ckpt = tmp_path / "w.pth"
        ckpt.write_text("not a checkpoint")
    args = ["export", "cspdensenet_bc100", "--checkpoint", str(ckpt), "--format", "onnx", "--output",
            str(tmp_path / "m.onnx")]  # fmt: skip
    assert main(args) == 2
    err = _one_error_line(capsys)
    expected = {"other_model": "does not fit", "missing": "not found", "not_weights": "refused"}[kind]
    assert expected in err


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_cli_export_keeps_no_file_that_failed_its_check(
    fmt: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import copy

    import cspnet.export.formats as formats

    def broken_folding(model: torch.nn.Module, **options: object) -> torch.nn.Module:
        broken = copy.deepcopy(model).eval()  # a folding bug: one weight off by 10 %
        next(p for p in broken.parameters() if p.dim() == 4).data.mul_(1.1)
        return broken

    monkeypatch.setattr(formats, "optimize_for_inference", broken_folding)
    output = tmp_path / f"m.{fmt}"
    output.write_bytes(b"the previous export")
    args = ["export", "cspdensenet_bc40", "--num-classes", "3", "--img-size", "32", "--format", fmt,
            "--output", str(output)]  # fmt: skip
    assert main(args) == 2
    err = _one_error_line(capsys)
    assert "does not reproduce PyTorch" in err and "nothing was written" in err, err
    assert output.read_bytes() == b"the previous export"  # not replaced by the file that failed
    assert sorted(p.name for p in tmp_path.iterdir()) == [output.name]  # no temporary left behind
    assert main([*args, "--tolerance", "0.5"]) == 0  # the same file passes a looser check, and is kept
    assert output.read_bytes() != b"the previous export"


# --- a full disk, a failing writer: one line naming --output, nothing half-written left ------------------


def _small_disk_available() -> bool:
    try:
        probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                               capture_output=True, timeout=30)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return False
    return probe.returncode == 0


@pytest.mark.skipif(not _small_disk_available(), reason="needs `unshare -rm` and tmpfs to simulate a full disk")
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_to_a_full_disk_is_one_line_and_keeps_the_previous_file(fmt: str, tmp_path: Path) -> None:
    """A real full disk (a 300 KiB tmpfs in a private mount namespace): TorchScript used to abort the
    process inside torch's C++ writer (exit 134) and leave a ``.m.pt.*.tmp.pt`` file each time."""
    disk = tmp_path / "disk"
    disk.mkdir()
    output = disk / f"m.{fmt}"
    command = (
        f"mount -t tmpfs -o size=300k tmpfs {disk} && printf previous > {output} && "
        f"{sys.executable} -m cspnet.cli.main export cspdensenet_bc40 --num-classes 3 --img-size 32 --format {fmt} "
        f"--output {output}; echo \"rc=$?\"; ls -A {disk}; cat {output}"
    )
    out = subprocess.run(["unshare", "-rm", "sh", "-c", command], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})  # fmt: skip
    assert out.stderr.strip() == f"cspnet export: error: {output}: No space left on device", out.stderr
    assert out.stdout.split() == ["rc=2", output.name, "previous"], out.stdout  # no temporaries, old file intact


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_a_writer_failing_halfway_leaves_nothing_and_names_the_output(
    fmt: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same, portable: the exporter writes half a file and then the disk is full."""

    def full_disk(model: object, f: object, *args: object, **kwargs: object) -> None:
        if isinstance(f, str | Path):
            Path(f).write_bytes(b"half a file")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch.onnx if fmt == "onnx" else torch.jit, "export" if fmt == "onnx" else "save", full_disk)
    output = tmp_path / f"m.{fmt}"
    assert main(["export", "cspdensenet_bc40", "--num-classes", "3", "--img-size", "32", "--format", fmt,
                 "--output", str(output)]) == 2  # fmt: skip
    assert _one_error_line(capsys) == f"cspnet export: error: {output}: No space left on device"
    assert list(tmp_path.iterdir()) == []


def test_detect_export_on_a_full_disk_leaves_no_corrupt_onnx(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cspnet.detection.export import export_detector_onnx

    real_export = torch.onnx.export

    def full_disk(model: object, args: object, f: str, *rest: object, **kwargs: object) -> None:
        real_export(model, args, f, *rest, **kwargs)  # type: ignore[arg-type]
        Path(f).write_bytes(Path(f).read_bytes()[:1000])  # the file is cut short ...
        raise OSError(errno.ENOSPC, "No space left on device")  # ... when the disk fills

    monkeypatch.setattr(torch.onnx, "export", full_disk)
    detector = cspnet.create_model("cspdensenet_bc40_efm", num_classes=2)
    with pytest.raises(OSError, match="No space left on device") as caught:
        export_detector_onnx(detector, tmp_path / "d.onnx", 64)
    assert caught.value.filename == str(tmp_path / "d.onnx") and list(tmp_path.iterdir()) == []


# --- sizes: one bound everywhere -----------------------------------------------------------------------------


def test_one_input_side_bound_everywhere(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import cspnet.data.transforms
    import cspnet.metadata
    import cspnet.training.config
    from cspnet.detection.export import export_detector_onnx
    from cspnet.inference import load_model

    bound = cspnet.metadata.MAX_IMG_SIZE
    assert cspnet.data.transforms.MAX_IMG_SIZE is bound and cspnet.training.config.MAX_IMG_SIZE is bound
    model = cspnet.create_model("cspdensenet_bc40", num_classes=3)
    too_large = f"img_size {bound + 1} is too large: at most {bound}"
    with pytest.raises(ValueError, match=too_large):  # before any image of that size is allocated
        export_model(model, "onnx", tmp_path / "m.onnx", bound + 1)
    with pytest.raises(ValueError, match=too_large):
        export_detector_onnx(cspnet.create_model("cspdensenet_bc40_efm", num_classes=2), tmp_path / "d.onnx", bound + 1)
    with pytest.raises(ValueError, match=too_large):
        load_model("cspdensenet_bc40", img_size=bound + 1)
    with pytest.raises(ValueError, match=too_large):
        cspnet.metadata.ModelInfo("m", ("a",), bound + 1, (0.5,) * 3, (0.5,) * 3)
    assert main(["export", "cspdensenet_bc40", "--format", "onnx", "--img-size", "100000", "--output",
                 str(tmp_path / "m.onnx")]) == 2  # fmt: skip
    assert "--img-size 100000 is too large: at most 4096" in _one_error_line(capsys)
    assert list(tmp_path.iterdir()) == []
