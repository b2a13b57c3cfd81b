"""``cspnet detect``: train, val, predict and export end to end on a tiny YOLO set; one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cspnet.cli.main import main
from detection_data import make_shapes


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """A checkpoint from `cspnet detect train` (one short epoch) and its data."""
    root = tmp_path_factory.mktemp("cli")
    data = make_shapes(root / "shapes", 6)
    out = root / "run"
    code = main(["detect", "train", "--data", str(data), "--set", "neck_widths=(16, 32, 64)", "--img-size", "64",
                 "--epochs", "1", "--batch-size", "3", "--output", str(out)])
    assert code == 0
    return out / "last.ckpt", data


def test_train_writes_the_run_and_prints_the_map(trained, capsys):
    ckpt, _ = trained
    metrics = json.loads((ckpt.parent / "metrics.json").read_text())
    assert 0.0 <= metrics["map"] <= 1.0 and 0.0 <= metrics["map50"] <= 1.0
    config = json.loads((ckpt.parent / "config.json").read_text())
    assert config["model"] == "cspdensenet_bc40_efm" and config["model_overrides"] == {"neck_widths": [16, 32, 64]}


def test_val_writes_coco_metrics(trained, tmp_path, capsys):
    ckpt, data = trained
    assert main(["detect", "val", "--checkpoint", str(ckpt), "--data", str(data), "--output", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "val.json").read_text())
    assert result["images"] == 6 and set(result["per_class"]) == {"red", "green", "blue"}
    assert "mAP@.5" in capsys.readouterr().out


def test_predict_draws_boxes_and_writes_coco_results(trained, tmp_path, capsys):
    ckpt, data = trained
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(2):
        Image.open(data.parent / "images" / f"{i}.png").resize((128, 96)).save(folder / f"photo{i}.png")
    out = tmp_path / "out"
    assert main(["detect", "predict", str(folder), "--checkpoint", str(ckpt), "--conf", "0.00001", "--output", str(out)]) == 0
    assert sorted(p.name for p in out.glob("*.png")) == ["photo0.png", "photo1.png"]
    assert Image.open(out / "photo0.png").size == (128, 96)  # drawn on the user's image, not the letterbox
    results = json.loads((out / "results.json").read_text())
    assert results and {r["image_id"] for r in results} <= {0, 1}
    for r in results:
        x, y, w, h = r["bbox"]
        assert 0 <= x and 0 <= y and x + w <= 128.01 and y + h <= 96.01 and 0 < r["score"] <= 1
        assert r["category"] in ("red", "green", "blue")


@pytest.mark.parametrize("nms", [False, True], ids=["decoded", "with-nms"])
def test_export_is_checked_in_onnxruntime_with_a_dynamic_batch(trained, tmp_path, nms, capsys):
    import onnxruntime as ort
    import torch

    from cspnet.detection.export import ExportableDetector
    from cspnet.trained import load_trained

    ckpt, _ = trained
    path = tmp_path / "d.onnx"
    args = ["detect", "export", "--checkpoint", str(ckpt), "--output", str(path), "--conf", "0.05"]
    assert main(args + (["--nms"] if nms else [])) == 0
    assert "checked in onnxruntime" in capsys.readouterr().out
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.rand(3, 3, 64, 64)
    got = session.run(None, {"images": x.numpy()})
    module = ExportableDetector(load_trained(ckpt, task='detection').model, nms, conf_threshold=0.05)
    with torch.no_grad():
        expected = module(x)
    if nms:
        assert got[0].shape[1] == 7
        assert got[0].shape == tuple(expected.shape)
        # As sets: a one-epoch model's scores saturate at 1.0 on noise, and engines order ties their own way.
        from cspnet.detection.export import _rows_difference

        assert _rows_difference(expected, torch.from_numpy(got[0])) < 1e-3
    else:
        assert got[0].shape == (3, 3 * (16 * 16 + 8 * 8 + 4 * 4), 4) and got[1].shape[2] == 3
        np.testing.assert_allclose(got[1], expected[1].numpy(), rtol=1e-4, atol=1e-5)


def _error(argv: list[str], capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_bad_input_is_a_one_line_error(trained, tmp_path, capsys):
    ckpt, data = trained
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{oops")
    assert "not valid JSON" in _error(["detect", "train", "--data", str(bad_json), "--output", str(tmp_path / "a")], capsys)
    assert "nope.yaml: not found" in _error(["detect", "train", "--data", str(tmp_path / "nope.yaml")], capsys)
    label = data.parent / "labels" / "0.txt"
    saved = label.read_text()
    try:
        label.write_text("5 0.5 0.5 0.2 0.2")
        err = _error(["detect", "train", "--data", str(data), "--output", str(tmp_path / "b")], capsys)
        assert "0.txt:1: class id 5 is out of range" in err
    finally:
        label.write_text(saved)
    assert "is not a detection model" in _error(["detect", "train", "--model", "cspdarknet53", "--output",
                                                  str(tmp_path / "c")], capsys)  # fmt: skip
    assert "--conf 2.0 is invalid" in _error(["detect", "predict", str(data.parent / "images"), "--checkpoint", str(ckpt),
                                               "--conf", "2"], capsys)  # fmt: skip
    assert "image not found" in _error(["detect", "predict", str(tmp_path / "none.png"), "--checkpoint", str(ckpt)], capsys)
    assert "the training checkpoint is not plain PyTorch data" in _error(["detect", "val", "--checkpoint", str(bad_json)], capsys)
    assert "not a detector" in _error(["detect", "export", "cspdarknet53", "--output", str(tmp_path / "x.onnx")], capsys)


def test_detect_without_an_action_prints_help():
    done = subprocess.run([sys.executable, "-m", "cspnet.cli.main", "detect"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "train" in done.stdout and "export" in done.stdout


@pytest.mark.slow
def test_two_process_ddp_on_cpu_evaluates_every_image_once(tmp_path):
    """``--devices 2`` (gloo): each process validates its share; COCO sees all of them, each once."""

    data = make_shapes(tmp_path / "shapes", 7)  # odd: the shares differ in size
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "cspnet.cli.main", "detect", "train", "--data", str(data), "--set",
           "neck_widths=(16, 32, 64)", "--img-size", "64", "--epochs", "1", "--batch-size", "2", "--devices", "2",
           "--accelerator", "cpu", "--output", str(tmp_path / "ddp")]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["val_images"] == 7
    assert 0.0 <= metrics["map50"] <= 1.0


# -- outputs: atomic, never over an input, never through a symlink, never a file that failed its check -----
def test_predict_refuses_to_write_over_its_input_images(trained, tmp_path, capsys):
    ckpt, data = trained
    folder = tmp_path / "photos"
    folder.mkdir()
    image = folder / "a.png"
    Image.open(data.parent / "images" / "0.png").save(image)
    before = image.read_bytes()
    err = _error(["detect", "predict", str(folder), "--checkpoint", str(ckpt), "--output", str(folder)], capsys)
    assert "would overwrite the input image" in err and str(image) in err
    assert image.read_bytes() == before and sorted(p.name for p in folder.iterdir()) == ["a.png"]


def test_predict_replaces_symlinks_instead_of_writing_through_them(trained, tmp_path):
    ckpt, data = trained
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    for name in ("results.json", "0.png"):
        (out / name).symlink_to(victim)
    assert main(["detect", "predict", str(data.parent / "images" / "0.png"), "--checkpoint", str(ckpt),
                 "--output", str(out)]) == 0  # fmt: skip
    assert victim.read_text() == "keep me"
    assert not (out / "results.json").is_symlink() and json.loads((out / "results.json").read_text()) is not None
    assert not (out / "0.png").is_symlink() and Image.open(out / "0.png").size == (64, 64)


def test_export_that_fails_its_check_leaves_no_file(trained, tmp_path, capsys):
    ckpt, _ = trained
    path = tmp_path / "d.onnx"
    err = _error(["detect", "export", "--checkpoint", str(ckpt), "--output", str(path), "--tolerance", "-1"], capsys)
    assert "nothing was written" in err and "does not reproduce PyTorch" in err
    assert not path.exists() and not list(tmp_path.glob(".*tmp*"))


@pytest.mark.parametrize("command", ["detect val", "eval"])
def test_val_and_eval_fail_on_a_read_only_output_before_evaluating(command, trained, tmp_path, capsys, monkeypatch):
    import errno

    import cspnet.evaluation
    import cspnet.training.files as files

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    def never(*args, **kwargs):
        raise AssertionError("evaluated before the output folder was checked")

    ckpt, data = trained
    if command == "eval":  # a classification checkpoint of its own
        from test_bad_input_checkpoints import fake_checkpoint

        ckpt = tmp_path / "c.ckpt"
        import torch

        torch.save(fake_checkpoint(), ckpt)
    monkeypatch.setattr(files.tempfile, "mkstemp", read_only)
    monkeypatch.setattr(cspnet.evaluation, "evaluate_detector", never)
    monkeypatch.setattr(cspnet.evaluation, "evaluate_classifier", never)
    err = _error([*command.split(), "--checkpoint", str(ckpt), "--output", str(tmp_path / "ro")], capsys)
    assert f"cannot write to --output {tmp_path / 'ro'}" in err and "Read-only file system" in err


def test_val_without_data_scores_the_runs_own_validation_split(trained, tmp_path):
    ckpt, data = trained
    assert main(["detect", "val", "--checkpoint", str(ckpt), "--output", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "val.json").read_text())
    assert result["data"] == f"{data} (the run's validation split)" and result["images"] == 6
    assert set(result["per_class"]) == {"red", "green", "blue"}  # the run's classes, not the digits'
