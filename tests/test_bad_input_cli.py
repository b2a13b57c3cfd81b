"""The CLI with bad values, closed pipes and hostile output paths; its start-up and ``--version``."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import cspnet
from cspnet.cli.main import COMMANDS, main
from test_bad_input_checkpoints import MODEL, fake_checkpoint, one_line_error

CLI = [sys.executable, "-m", "cspnet.cli.main"]
CLI_SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def run_cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120, **kwargs)


@pytest.fixture()
def checkpoint(tmp_path: Path) -> Path:
    path = tmp_path / "run" / "last.ckpt"
    path.parent.mkdir()
    torch.save(fake_checkpoint(), path)
    return path


def test_the_one_line_help_of_every_command_matches_its_module() -> None:
    for name, help_text in COMMANDS.items():
        parser = argparse.ArgumentParser()
        sub = parser.add_subparsers()
        importlib.import_module(f"cspnet.cli.{name}").add_parser(sub)
        assert sub._choices_actions[0].help == help_text, name


def test_the_generated_model_table_matches_the_registry() -> None:
    """Fails when a model changed without `PYTHONPATH=src python -m cspnet.cli.models` being rerun."""
    from cspnet.cli.model_table import MODELS
    from cspnet.cli.models import live_rows, render_table_module

    assert list(MODELS) == live_rows()
    assert Path(importlib.import_module("cspnet.cli.model_table").__file__).read_text() == render_table_module(
        list(MODELS)
    )


def test_help_version_and_models_start_without_torch() -> None:
    code = (
        "import sys, contextlib, io\n"
        "from cspnet.cli.main import main\n"
        "for argv in (['--help'], ['--version'], ['models'], ['models', 'csp*', '--names-only']):\n"
        "    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "        main(argv)\n"
        "heavy = sorted(m for m in ('torch', 'lightning', 'matplotlib', 'onnx', 'numpy') if m in sys.modules)\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_version() -> None:
    out = run_cli("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"cspnet {cspnet.__version__}"


def test_models_output_keeps_its_format(capsys) -> None:
    assert main(["models", "cspdensenet_bc4*"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["model", "params", "input", "description"]
    assert lines[1].split()[:3] == ["cspdensenet_bc40", "288,760", "32x32"]
    assert main(["models", "--live", "cspdensenet_bc4*"]) == 0
    assert capsys.readouterr().out.splitlines() == lines


def test_a_closed_pipe_ends_quietly() -> None:
    """`cspnet models | head -1`: the reader goes away before the output is written."""
    proc = subprocess.Popen([*CLI, "models"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) in (0, 141) and err == "", err
    shell = subprocess.run(f"{' '.join(CLI)} models | head -1", shell=True, capture_output=True, text=True)
    assert shell.stdout.startswith("model") and shell.stderr == ""


# -- values ----------------------------------------------------------------------------------------
STRIDE = max(cspnet.create_model("cspdensenet_bc40").feature_info.reduction())


@CLI_SETTINGS
@given(size=st.one_of(st.integers(-5, STRIDE - 1), st.integers(4097, 10**7)))
def test_profile_img_size_out_of_range_is_one_line(size: int, capsys) -> None:
    err = one_line_error(capsys, ["profile", "cspdensenet_bc40", f"--img-size={size}"])
    assert f"--img-size {size}" in err and ("invalid" in err or "too large" in err or "too small" in err)


@pytest.mark.parametrize(("size", "message"), [("1", "is too small for"), ("100000", "too large: at most 4096"),
                                               ("0", "is invalid")])  # fmt: skip
def test_export_img_size_out_of_range_is_one_line(size: str, message: str, tmp_path: Path, capsys) -> None:
    err = one_line_error(capsys, ["export", "cspdensenet_bc40", "--format", "torchscript", "--img-size", size,
                                  "--output", str(tmp_path / "m.pt")])  # fmt: skip
    assert message in err and not (tmp_path / "m.pt").exists()


def test_export_output_that_is_a_folder_or_under_a_file_is_one_line(tmp_path: Path, capsys) -> None:
    base = ["export", "cspdensenet_bc40", "--format", "torchscript", "--output"]
    assert "is a folder" in one_line_error(capsys, [*base, str(tmp_path)])
    (tmp_path / "file").write_text("x")
    assert "is a file, not a folder" in one_line_error(capsys, [*base, str(tmp_path / "file" / "m.pt")])
    if os.geteuid() != 0:  # root may write anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        assert "cannot write in" in one_line_error(capsys, [*base, str(locked / "m.pt")])


@CLI_SETTINGS
@given(value=st.one_of(st.floats(allow_nan=True, allow_infinity=True).filter(lambda v: not 0 < v <= 1),
                       st.sampled_from(["0", "-1", "1.5", "nan", "inf"])))  # fmt: skip
def test_bad_crop_pct_is_one_line(value, checkpoint: Path, tmp_path: Path, capsys) -> None:
    err = one_line_error(capsys, ["eval", "--checkpoint", str(checkpoint), f"--crop-pct={value}",
                                  "--output", str(tmp_path / "out")])  # fmt: skip
    assert "--crop-pct" in err and "expected a fraction in (0, 1]" in err


@pytest.mark.parametrize("argv", [["eval", "--precision", "64"], ["predict", "x.png", "--precision", "fp16"]])
def test_unknown_precisions_are_usage_errors(argv, checkpoint: Path, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main([*argv, "--checkpoint", str(checkpoint)])
    assert info.value.code == 2 and "invalid choice" in capsys.readouterr().err


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_every_listed_precision_runs(precision: str, checkpoint: Path, tmp_path: Path, capsys) -> None:
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(image)
    assert main(["predict", str(image), "--checkpoint", str(checkpoint), "--precision", precision, "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 1


def test_eval_output_that_is_a_file_is_one_line(checkpoint: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "file").write_text("x")
    err = one_line_error(capsys, ["eval", "--checkpoint", str(checkpoint), "--output", str(tmp_path / "file")])
    assert "is a file" in err


# -- images in predict -----------------------------------------------------------------------------
def test_predict_reports_a_decompression_bomb_and_predicts_the_rest(checkpoint, tmp_path, capsys, monkeypatch):
    good, bomb = tmp_path / "good.png", tmp_path / "bomb.png"
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(good)
    Image.fromarray(np.zeros((200, 200, 3), np.uint8)).save(bomb)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # 40,000 pixels: a bomb by Pillow's rule
    assert main(["predict", str(bomb), str(good), "--checkpoint", str(checkpoint), "--json"]) == 0
    captured = capsys.readouterr()
    assert [r["image"] for r in json.loads(captured.out)] == [str(good)]
    assert "skipped 1 unreadable image(s)" in captured.err and "bomb.png" in captured.err


def test_predict_batches_many_images(checkpoint, tmp_path, capsys):
    paths = []
    for i in range(5):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(np.full((20, 20, 3), 40 * i, np.uint8)).save(paths[-1])
    assert main(["predict", *paths, "--checkpoint", str(checkpoint), "--json", "--batch-size", "2"]) == 0
    batched = json.loads(capsys.readouterr().out)
    assert main(["predict", *paths, "--checkpoint", str(checkpoint), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == batched and [r["image"] for r in batched] == paths


# -- outputs ---------------------------------------------------------------------------------------
def test_eval_outputs_replace_symlinks_and_get_normal_permissions(checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    (out / "eval.json").symlink_to(victim)
    (out / "confusion_matrix.png").symlink_to(victim)
    old = os.umask(0o022)
    try:
        assert main(["eval", "--checkpoint", str(checkpoint), "--output", str(out), "--data", "digits"]) == 2
    finally:
        os.umask(old)
    # The fake checkpoint has 3 classes: evaluating on the 10 digits is refused before anything is written.
    assert "the checkpoint has 3 classes, the digits 10" in capsys.readouterr().err
    assert victim.read_text() == "keep me"


def test_eval_json_is_strict_json_and_never_follows_a_link(tmp_path, capsys):
    """A folder run evaluated into a folder whose eval.json is a symlink to another file."""
    root = tmp_path / "photos"
    rng = np.random.default_rng(0)
    for c in ("a", "b", "c"):
        (root / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    ckpt = tmp_path / "last.ckpt"
    torch.save(fake_checkpoint(data=str(root)), ckpt)
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    (out / "eval.json").symlink_to(victim)
    (out / "confusion_matrix.png").symlink_to(victim)
    old = os.umask(0o022)
    try:
        assert main(["eval", "--checkpoint", str(ckpt), "--output", str(out)]) == 0
    finally:
        os.umask(old)
    assert victim.read_text() == "keep me"
    for name in ("eval.json", "confusion_matrix.png"):
        path = out / name
        assert not path.is_symlink() and stat.S_IMODE(path.stat().st_mode) == 0o644, name
    text = (out / "eval.json").read_text()
    result = json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c} in eval.json"))
    assert result["images"] == 3 and result["skipped_images"] == 0 and result["crop_pct"] == 0.875
    assert not list(out.glob(".*.tmp*"))  # no temporaries left behind


def test_dumps_json_writes_null_for_nan_and_infinity() -> None:
    from cspnet.io import dumps_json

    text = dumps_json({"loss": float("nan"), "rows": [{"top1": float("inf")}, (1.0, float("-inf"))]})
    assert json.loads(text) == {"loss": None, "rows": [{"top1": None}, [1.0, None]]}


def test_eval_counts_undecodable_images_instead_of_substituting(tmp_path, capsys):
    root = tmp_path / "photos"
    rng = np.random.default_rng(0)
    for c in ("a", "b", "c"):
        (root / c).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(root / c / f"{i}.jpg")
    from test_bad_input_images import noise_jpeg

    (root / "a" / "0.jpg").write_bytes(noise_jpeg()[:3000])  # passes verify, fails to decode
    ckpt = tmp_path / "last.ckpt"
    torch.save(fake_checkpoint(), ckpt)
    with pytest.warns(UserWarning, match="undecodable"):
        assert main(["eval", "--checkpoint", str(ckpt), "--data", str(root), "--output", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["images"] == 5 and result["skipped_images"] == 1
    assert "1 undecodable image(s) left out" in capsys.readouterr().out


# -- export ----------------------------------------------------------------------------------------
def test_export_num_classes_on_another_head_warns_at_the_default_level(tmp_path: Path) -> None:
    weights = tmp_path / "w.pth"
    torch.save(cspnet.create_model("cspdensenet_bc40", num_classes=10).state_dict(), weights)
    out = run_cli("export", "cspdensenet_bc40", "--checkpoint", str(weights), "--num-classes", "4",
                  "--format", "torchscript", "--output", str(tmp_path / "m.pt"))  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "classifier not loaded: the checkpoint has 10 classes, the model 4" in out.stderr
    assert stat.S_IMODE((tmp_path / "m.pt").stat().st_mode) == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_export_replaces_a_symlink_instead_of_writing_through_it(tmp_path: Path, capsys) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    (tmp_path / "m.pt").symlink_to(victim)
    assert main(["export", "cspdensenet_bc40", "--format", "torchscript", "--output", str(tmp_path / "m.pt")]) == 0
    assert victim.read_text() == "keep me" and not (tmp_path / "m.pt").is_symlink()
    assert f"wrote {tmp_path / 'm.pt'}" in capsys.readouterr().out
    assert torch.jit.load(str(tmp_path / "m.pt"))(torch.zeros(1, 3, 32, 32)).shape == (1, 1000)


# -- training on a folder with an undecodable image ------------------------------------------------
def test_training_skips_a_truncated_jpeg_that_passes_verify(tmp_path: Path) -> None:
    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    full = root / "cat" / "cut.jpg"
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(full, quality=90)
    full.write_bytes(full.read_bytes()[:2000])
    with pytest.warns(UserWarning, match=r"skipped an undecodable image \(1 so far\)"):
        code = main(["train", "--data", str(root), "--override", "block_config=[2,2,2]", "--img-size", "8",
                     "--epochs", "2", "--batch-size", "4", "--workers", "0", "--output", str(tmp_path / "out")])  # fmt: skip
    assert code == 0 and (tmp_path / "out" / "last.ckpt").exists()
    assert MODEL in torch.load(tmp_path / "out" / "last.ckpt", weights_only=True)["model_name"]
