"""``cspnet train / eval / predict``: a written checkpoint is all they need; bad input is one line, exit 2."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from cspnet.cli.main import main
from cspnet.training import TrainConfig, fit

TINY_ARGS = ["--override", "block_config=[2,2,2]", "--img-size", "8", "--epochs", "1"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    fit(TrainConfig(model_overrides={"block_config": (2, 2, 2)}, img_size=8, epochs=1, output=str(out)), verbose=False)
    return out / "last.ckpt"


@pytest.fixture()
def digit_images(tmp_path):
    """Three digits from the held-out split written as PNG files, with their labels."""
    from cspnet.data import load_digits_split

    val = load_digits_split(32)[1]
    paths, labels = [], []
    for i in range(3):
        image, label = val[i]
        path = tmp_path / f"digit{i}.png"
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(path)
        paths.append(str(path))
        labels.append(str(label))
    return paths, labels


def one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_eval_reports_metrics_and_writes_a_confusion_matrix(checkpoint, tmp_path, capsys):
    assert main(["eval", "--checkpoint", str(checkpoint), "--output", str(tmp_path)]) == 0
    assert "top-1" in capsys.readouterr().out
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["images"] == 359 and 0 <= result["top5"] <= 100 and result["top1"] <= result["top5"]
    assert (tmp_path / "confusion_matrix.png").stat().st_size > 0


def test_predict_prints_labels_and_probabilities(checkpoint, digit_images, capsys):
    paths, _ = digit_images
    assert main(["predict", *paths, "--checkpoint", str(checkpoint), "--topk", "2", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert [r["image"] for r in results] == paths
    for r in results:
        assert len(r["predictions"]) == 2 and r["predictions"][0]["label"] in [str(i) for i in range(10)]
        assert r["predictions"][0]["probability"] >= r["predictions"][1]["probability"]


def test_bf16_eval_and_predict_agree_with_fp32(checkpoint, digit_images, tmp_path, capsys):
    results = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / precision
        assert main(["eval", "--checkpoint", str(checkpoint), "--output", str(out), "--precision", precision]) == 0
        results[precision] = json.loads((out / "eval.json").read_text())
        assert results[precision]["precision"] == precision
    assert abs(results["bf16"]["top1"] - results["fp32"]["top1"]) <= 1.0  # at most ~3 of 359 images
    assert results["bf16"]["loss"] == pytest.approx(results["fp32"]["loss"], rel=0.05)
    capsys.readouterr()
    paths, _ = digit_images
    assert main(["predict", *paths, "--checkpoint", str(checkpoint), "--precision", "bf16", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 3


def test_predict_skips_an_unreadable_image_with_a_warning(checkpoint, digit_images, tmp_path, capsys):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    assert main(["predict", str(bad), digit_images[0][0], "--checkpoint", str(checkpoint)]) == 0
    captured = capsys.readouterr()
    assert "skipped 1 unreadable" in captured.err and digit_images[0][0] in captured.out
    err = one_line_error(capsys, ["predict", str(bad), "--checkpoint", str(checkpoint)])
    assert "none of the 1 image(s) can be read" in err


def write_folder(root, per_class=4, broken=0):
    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    for i in range(broken):
        (root / "cat" / f"broken{i}.jpg").write_bytes(b"garbage")


def test_train_on_a_folder_skips_unreadable_images(tmp_path, capsys):
    write_folder(tmp_path / "data", broken=2)
    with pytest.warns(UserWarning, match="skipped 2 unreadable"):
        code = main(["train", "--data", str(tmp_path / "data"), *TINY_ARGS, "--batch-size", "4",
                     "--workers", "0", "--output", str(tmp_path / "out")])  # fmt: skip
    assert code == 0
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["world_size"] == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--data", "{tmp}/missing"], "missing: not found"),
        (["train", "--data", "{tmp}/empty"], "no class sub-folders"),
        (["train", "--data", "{tmp}/noimages"], "has no images"),
        (["train", "--data", "{tmp}/unreadable"], "none of its 2 images can be read"),
        (["train", "--img-size", "0"], "--img-size 0 is invalid"),
        (["train", "--img-size", "3"], "too small for cspdensenet_bc40"),
        (["train", "--model", "nosuchnet"], "unknown model"),
        (["train", "--override", "partial_ratio=2"], "partial_ratio=2 is out of range"),
        (["eval", "--checkpoint", "{tmp}/missing.ckpt"], "checkpoint file not found"),
        (["eval", "--checkpoint", "{tmp}/plain.pth"], "is not a `cspnet train` checkpoint"),
        (["eval", "--checkpoint", "{ckpt}", "--model", "densenet_bc100"], "not 'densenet_bc100'"),
        (["eval", "--checkpoint", "{ckpt}", "--data", "{tmp}/missing"], "data folder not found"),
        (["predict", "{tmp}/missing.png", "--checkpoint", "{ckpt}"], "can be read"),
    ],
)
def test_bad_input_is_a_one_line_error(argv, message, checkpoint, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "noimages" / "a").mkdir(parents=True)
    (tmp_path / "noimages" / "a" / "notes.txt").write_text("no images here")
    (tmp_path / "unreadable" / "a").mkdir(parents=True)
    for name in ("x.png", "y.jpg"):
        (tmp_path / "unreadable" / "a" / name).write_bytes(b"garbage")
    torch.save({"weight": torch.zeros(2)}, tmp_path / "plain.pth")
    argv = [a.format(tmp=tmp_path, ckpt=checkpoint) for a in argv]
    if argv[0] == "train":
        argv += ["--output", str(tmp_path / "out")]
    err = one_line_error(capsys, argv)
    assert message in err, err
