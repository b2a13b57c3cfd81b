"""Hand-edited or foreign training checkpoints of every task in the commands that read them: one line each, exit 2.

Checkpoints are written here in the format ``ResumableModule.on_save_checkpoint`` produces (the
top-level keys, Lightning's ``state_dict`` with ``model.`` keys, ``ema_state_dict = {"module", "updates"}``
and ``hyper_parameters["train_config"]``), without training, so each case costs milliseconds. The
classification and the detection checkpoints go through the one reader (:mod:`cspnet.trained`), so
every case is tried on both, in each task's commands.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import cspnet
from cspnet.cli.main import main
from cspnet.convert import CheckpointError
from cspnet.training import load_trained

MODEL, OVERRIDES, CLASSES, IMG = "cspdensenet_bc40", {"block_config": (1, 1, 1)}, 3, 16
# Per task: (model, overrides, img_size).
TASK_MODELS = {
    "classification": (MODEL, OVERRIDES, IMG),
    "detection": ("cspdensenet_bc40_efm", {"neck_widths": (8, 16, 32)}, 64),
}


def fake_checkpoint(ema: bool = True, task: str = "classification", **train_config: Any) -> dict[str, Any]:
    """A checkpoint as `cspnet train` / `cspnet detect train` write it; raw and EMA weights differ (EMA = raw + 1)."""
    model_name, overrides, img = TASK_MODELS[task]
    torch.manual_seed(0)
    model = cspnet.create_model(model_name, num_classes=CLASSES, **overrides)
    raw = {k: v.clone() for k, v in model.state_dict().items()}
    averaged = {k: v + 1 if v.is_floating_point() else v.clone() for k, v in raw.items()}
    config = {"model": model_name, "data": "digits", "ema": ema, "img_size": img, "val_fraction": 0.2, **train_config}
    ckpt: dict[str, Any] = {
        "state_dict": {f"model.{k}": v for k, v in raw.items()},
        "hyper_parameters": {"train_config": config},
        "task": task,
        "model_name": model_name,
        "model_overrides": dict(overrides),
        "num_classes": CLASSES,
        "class_names": ["a", "b", "c"],
        "img_size": img,
        "mean": [0.5, 0.5, 0.5] if task == "classification" else [0.0, 0.0, 0.0],
        "std": [0.25, 0.25, 0.25] if task == "classification" else [1.0, 1.0, 1.0],
    }
    if ema:
        ckpt["ema_state_dict"] = {"module": averaged, "updates": 10}
    return ckpt


@pytest.fixture()
def image(tmp_path: Path) -> str:
    path = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(path)
    return str(path)


def one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def _without(key: str):
    return lambda c: {k: v for k, v in c.items() if k != key}


def _set(key: str, value: Any):
    return lambda c: {**c, key: value}


CASES = {
    "missing EMA": (lambda c: _without("ema_state_dict")(c), "trained with EMA but the checkpoint has no ema_state_dict"),
    "EMA without module": (_set("ema_state_dict", {"updates": 3}), "ema_state_dict holds no 'module' weights"),
    "fewer class names": (_set("class_names", ["a", "b"]), "2 class names for 3 classes"),
    "class names not strings": (_set("class_names", [1, 2, 3]), "class_names must be a list of names"),
    "img_size 0": (_set("img_size", 0), "img_size 0 is invalid"),
    "img_size negative": (_set("img_size", -16), "img_size -16 is invalid"),
    "img_size huge": (_set("img_size", 100000), "img_size 100000 is too large: at most 4096"),
    "img_size below stride": (_set("img_size", 2), "img_size 2 is too small for cspdensenet_bc40"),
    "img_size text": (_set("img_size", "16"), "img_size '16' is invalid"),
    "mean of 2": (_set("mean", [0.5, 0.5]), "mean must hold 3 numbers"),
    "std of 4": (_set("std", [0.2] * 4), "std must hold 3 numbers"),
    "std zero": (_set("std", [0.2, 0.0, 0.2]), "must be positive"),
    "mean NaN": (_set("mean", [0.5, float("nan"), 0.5]), "must be finite numbers"),
    "no num_classes": (_without("num_classes"), "needs num_classes, which it lacks"),
    "no class_names": (_without("class_names"), "needs class_names, which it lacks"),
    "num_classes zero": (_set("num_classes", 0), "num_classes 0 is invalid"),
    "model name a number": (_set("model_name", 5), "model_name 5 is not a model name"),
    "unknown model": (_set("model_name", "nosuchnet"), "unknown model 'nosuchnet'"),
    "bad override": (_set("model_overrides", {"drop_rate": 7}), "drop_rate=7 is out of range"),
    "overrides not a mapping": (_set("model_overrides", [1, 2]), "model_overrides must map"),
    "state_dict a list": (lambda c: {**_without("ema_state_dict")(c), "state_dict": [1],
                                     "hyper_parameters": {}}, "state_dict is a list"),  # fmt: skip
    "EMA weights of another model": (
        lambda c: {**c, "ema_state_dict": {"module": {"w": torch.zeros(2)}}}, "does not fit cspdensenet_bc40"),
    "task unknown": (_set("task", "segmentation"), "task 'segmentation' is invalid"),
    "a classifier named in a detection checkpoint": (
        lambda c: {**c, "task": "detection", "model_name": "densenet_bc40"} if c["task"] == "classification"
        else {**c, "task": "classification", "model_name": "csppeleenet_efm"},
        "but the checkpoint says task"),  # fmt: skip
}
# Where a task's reader says it differently.
TASK_MESSAGES = {("detection", "img_size below stride"): "img_size 2 is invalid for cspdensenet_bc40_efm: a "
                 "detector's input side is a multiple of its stride"}  # fmt: skip


def _argv(command: str, path: Path, image: str, tmp_path: Path) -> list[str]:
    return {
        "eval": ["eval", "--checkpoint", str(path), "--output", str(tmp_path / "out")],
        "predict": ["predict", image, "--checkpoint", str(path)],
        "export": ["export", "--checkpoint", str(path), "--format", "torchscript", "--output", str(tmp_path / "m.pt")],
        "detect val": ["detect", "val", "--checkpoint", str(path), "--output", str(tmp_path / "out")],
        "detect predict": ["detect", "predict", image, "--checkpoint", str(path), "--output", str(tmp_path / "out")],
        "detect export": ["detect", "export", "--checkpoint", str(path), "--output", str(tmp_path / "m.pt")],
    }[command]


COMMANDS = {"classification": ("eval", "predict", "export"),
            "detection": ("detect val", "detect predict", "detect export")}  # fmt: skip


@pytest.mark.parametrize(("task", "command"), [(t, c) for t, cs in COMMANDS.items() for c in cs])
@pytest.mark.parametrize("case", sorted(CASES))
def test_a_bad_training_checkpoint_is_one_line(case: str, task: str, command: str, tmp_path: Path, image: str,
                                               capsys) -> None:  # fmt: skip
    edit, message = CASES[case]
    path = tmp_path / "edited.ckpt"
    torch.save(edit(fake_checkpoint(task=task)), path)
    err = one_line_error(capsys, _argv(command, path, image, tmp_path))
    assert TASK_MESSAGES.get((task, case), message) in err, err
    assert not (tmp_path / "m.pt").exists()


# `cspnet export` of a detection checkpoint hands it to `cspnet detect export` (tests/test_detection.py).
@pytest.mark.parametrize(("task", "command"), [(t, c) for t, cs in COMMANDS.items() for c in cs
                                               if (t, c) != ("classification", "export")])  # fmt: skip
def test_a_checkpoint_of_the_other_task_names_the_right_commands(task: str, command: str, tmp_path: Path,
                                                                 image: str, capsys) -> None:  # fmt: skip
    other = "detection" if task == "classification" else "classification"
    path = tmp_path / "other.ckpt"
    torch.save(fake_checkpoint(task=other), path)
    err = one_line_error(capsys, _argv(command, path, image, tmp_path))
    use = "cspnet detect predict / val / export" if other == "detection" else "cspnet predict / eval / export"
    assert f"is a {other} checkpoint" in err and use in err, err


def test_a_run_without_ema_loads_its_raw_weights(tmp_path: Path) -> None:
    path = tmp_path / "noema.ckpt"
    torch.save(fake_checkpoint(ema=False), path)
    trained = load_trained(path)
    assert trained.weights == "raw"
    expected = fake_checkpoint(ema=False)["state_dict"]["model.stem.conv1.conv.weight"]
    assert torch.equal(trained.model.stem.conv1.conv.weight, expected)


def test_create_model_loads_the_ema_weights_of_a_training_checkpoint(tmp_path: Path) -> None:
    ckpt = fake_checkpoint()
    path = tmp_path / "best.ckpt"
    torch.save(ckpt, path)
    model = cspnet.create_model(MODEL, num_classes=CLASSES, pretrained=path, **OVERRIDES)
    ema = ckpt["ema_state_dict"]["module"]
    for key, value in model.state_dict().items():
        assert torch.equal(value, ema[key]), key
    # Exactly what eval and predict run.
    trained = load_trained(path)
    assert trained.weights == "ema"
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in trained.model.state_dict().items())
    # Without an EMA, the raw weights (the `model.` keys of Lightning's state_dict).
    del ckpt["ema_state_dict"]
    torch.save(ckpt, path)
    model = cspnet.create_model(MODEL, num_classes=CLASSES, pretrained=path, **OVERRIDES)
    assert torch.equal(model.stem.conv1.conv.weight, ckpt["state_dict"]["model.stem.conv1.conv.weight"])


VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True), st.text(max_size=5),
    st.lists(st.floats(allow_nan=True), max_size=5), st.lists(st.text(max_size=3), max_size=4),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
FIELDS = ["model_name", "model_overrides", "num_classes", "class_names", "img_size", "mean", "std",
          "state_dict", "ema_state_dict", "hyper_parameters"]  # fmt: skip


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=st.dictionaries(st.sampled_from(FIELDS), VALUES, min_size=1, max_size=3),
       drop=st.lists(st.sampled_from(FIELDS), max_size=2))  # fmt: skip
def test_generated_edits_raise_only_checkpoint_error(tmp_path: Path, edits: dict, drop: list) -> None:
    ckpt = copy.deepcopy(fake_checkpoint())
    ckpt.update(edits)
    for key in drop:
        ckpt.pop(key, None)
    path = tmp_path / "gen.ckpt"
    torch.save(ckpt, path)
    try:
        trained = load_trained(path)
    except CheckpointError as exc:
        assert "\n" not in str(exc).strip() or "does not fit" in str(exc)  # mismatch reports are folded by the CLI
        return
    assert len(trained.class_names) == trained.model.num_classes and 1 <= trained.img_size <= 4096


def test_eval_without_data_uses_the_runs_data(tmp_path: Path, capsys) -> None:
    """A folder run is evaluated on its own held-out split, with the run's crop_pct."""
    root = tmp_path / "photos"
    rng = np.random.default_rng(0)
    for c in ("a", "b", "c"):
        (root / c).mkdir(parents=True)
        for i in range(5):
            Image.fromarray(rng.integers(0, 255, (24, 20, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    path = tmp_path / "run" / "last.ckpt"
    path.parent.mkdir()
    torch.save(fake_checkpoint(data=str(root), crop_pct=0.9), path)
    assert main(["eval", "--checkpoint", str(path)]) == 0
    result = json.loads((path.parent / "eval.json").read_text())
    assert result["images"] == 3 and result["crop_pct"] == 0.9  # round(5 * 0.2) = 1 held out per class
    # A run on DATA/train + DATA/val is evaluated on DATA/val.
    split = tmp_path / "split"
    for part, count in (("train", 1), ("val", 2)):
        for c in ("a", "b", "c"):
            (split / part / c).mkdir(parents=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(split / part / c / f"{i}.png")
    torch.save(fake_checkpoint(data=str(split)), path)
    assert main(["eval", "--checkpoint", str(path)]) == 0
    assert json.loads((path.parent / "eval.json").read_text())["images"] == 6
    # The folder gone: a one-line error that says whose data it was.
    torch.save(fake_checkpoint(data=str(tmp_path / "gone")), path)
    err = one_line_error(capsys, ["eval", "--checkpoint", str(path)])
    assert "data folder not found" in err and "the run's data" in err


def test_a_real_training_checkpoint_gives_create_model_its_ema_weights(tmp_path: Path) -> None:
    from cspnet.training import TrainConfig, fit

    overrides = {"block_config": (2, 2, 2)}
    fit(TrainConfig(model_overrides=overrides, img_size=8, epochs=1, output=str(tmp_path)), verbose=False)
    best = tmp_path / "best.ckpt"
    model = cspnet.create_model("cspdensenet_bc40", num_classes=10, pretrained=best, **overrides)
    trained = load_trained(best)
    assert trained.weights == "ema"
    for key, value in trained.model.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    raw = torch.load(best, weights_only=True)["state_dict"]["model.stem.conv1.conv.weight"]
    assert not torch.equal(model.stem.conv1.conv.weight, raw)  # the EMA, not the raw weights
