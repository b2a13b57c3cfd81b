"""``cspnet train`` under the user's mistakes and the machine's failures: one line, nothing lost.

Resuming with contradicting flags, broken ``last.ckpt`` files, a read-only or full disk, Ctrl-C,
and settings that are out of range. Each is what a user would type or hit.
"""

from __future__ import annotations

import errno
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cspnet.cli.main import main
from cspnet.training import TrainConfig, fit

TINY = ["--model", "cspdensenet_bc100", "--set", "block_config=(1, 1, 1)", "--set", "growth_rate=6",
        "--img-size", "8", "--batch-size", "256"]  # fmt: skip


def one_line_error(capsys, argv) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A 1-epoch run, finished: its folder holds last.ckpt, config.json, history.csv."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert main(["train", *TINY, "--epochs", "1", "--output", str(out)]) == 0
    return out


def copy_run(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--batch-size", "32"], "--batch-size 32 (the run has 256)"),
        (["--model", "densenet_bc100"], "--model 'densenet_bc100' (the run has 'cspdensenet_bc100')"),
        (["--seed", "3"], "--seed 3 (the run has 0)"),
        (["--img-size", "16"], "--img-size 16 (the run has 8)"),
        (["--set", "growth_rate=8"], "the run has {'block_config': (1, 1, 1), 'growth_rate': 6}"),
        (["--lr", "0.5"], "--lr 0.5 (the run has 0.1)"),
    ],
)
def test_resume_with_a_contradicting_flag_names_both_values(flags, message, finished_run, tmp_path, capsys):
    out = copy_run(finished_run, tmp_path / "run")
    before = (out / "config.json").read_bytes(), (out / "config.yaml").read_bytes()
    err = one_line_error(capsys, ["train", "--output", str(out), "--resume", *flags])
    assert message in err
    assert ((out / "config.json").read_bytes(), (out / "config.yaml").read_bytes()) == before  # never rewritten


def test_resume_takes_the_run_settings_and_more_epochs_extend_it(finished_run, tmp_path, capsys, caplog):
    out = copy_run(finished_run, tmp_path / "run")
    # The same flags as the run (what a user re-running the command would type) are accepted.
    assert main(["train", *TINY, "--epochs", "1", "--output", str(out), "--resume"]) == 0
    with caplog.at_level("WARNING"):
        assert main(["train", "--output", str(out), "--resume", "--epochs", "2"]) == 0
    assert "training for 2 epochs instead of 1" in caplog.text
    assert json.loads((out / "config.json").read_text())["epochs"] == 2
    assert len((out / "history.csv").read_text().splitlines()) == 3  # header + 2 epochs
    err = one_line_error(capsys, ["train", "--output", str(out), "--resume", "--epochs", "1"])
    assert "already trained 2 epochs" in err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "is empty"),
        ("truncated", "the checkpoint is truncated or corrupt"),
        (b"not a checkpoint at all", "is not plain PyTorch data"),
        ("weights", "is not a `cspnet train` checkpoint"),
    ],
)
def test_a_broken_last_ckpt_is_a_one_line_error(content, message, finished_run, tmp_path, capsys):
    out = copy_run(finished_run, tmp_path / "run")
    last = out / "last.ckpt"
    if content == "truncated":
        data = last.read_bytes()
        last.write_bytes(data[: len(data) // 2])
    elif content == "weights":
        torch.save({"head.fc.weight": torch.zeros(10, 4)}, last)
    else:
        last.write_bytes(content)
    before = (out / "config.json").read_bytes()
    assert message in one_line_error(capsys, ["train", "--output", str(out), "--resume"])
    assert (out / "config.json").read_bytes() == before


def test_a_checkpoint_of_another_model_is_refused(finished_run, tmp_path, capsys):
    out = copy_run(finished_run, tmp_path / "run")
    err = one_line_error(capsys, ["train", "--output", str(out), "--resume", "--model", "densenet_bc40"])
    assert "densenet_bc40" in err and "cspdensenet_bc100" in err


def test_stale_temporaries_of_killed_writes_are_removed(finished_run, tmp_path):
    out = copy_run(finished_run, tmp_path / "run")
    (out / ".last.ckpt.x1y2.tmp").write_bytes(b"half a checkpoint")
    assert main(["train", "--output", str(out), "--resume"]) == 0
    assert not list(out.glob(".*.tmp*"))


def test_a_read_only_output_fails_before_training(tmp_path, capsys, monkeypatch):
    import cspnet.training.files as files

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(files.tempfile, "mkstemp", read_only)
    started = time.perf_counter()
    err = one_line_error(capsys, ["train", *TINY, "--epochs", "1", "--output", str(tmp_path / "ro")])
    assert "cannot write to --output" in err and "Read-only file system" in err
    assert time.perf_counter() - started < 30  # no epoch was trained first


def test_disk_full_keeps_the_previous_checkpoint_and_every_history_row(tmp_path, capsys, monkeypatch):
    """The disk fills up at the epoch-2 checkpoint; space comes back; --resume finishes the run exactly."""
    import cspnet.training.files as files

    reference = tmp_path / "ref"
    assert main(["train", *TINY, "--epochs", "3", "--checkpoint-every", "0", "--output", str(reference)]) == 0

    out = tmp_path / "run"
    real_save = files.torch.save
    calls = {"n": 0}

    def full_disk_on_epoch_2(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("epoch") == 1 and "loops" in obj:  # epoch index 1 = epoch 2
            raise OSError(errno.ENOSPC, "No space left on device")
        calls["n"] += 1
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(files.torch, "save", full_disk_on_epoch_2)
    err = one_line_error(capsys, ["train", *TINY, "--epochs", "3", "--checkpoint-every", "0", "--output", str(out)])
    assert "the disk is full" in err and "--resume" in err
    ckpt = torch.load(out / "last.ckpt", weights_only=True)  # the epoch-1 checkpoint, whole
    assert ckpt["epoch"] == 0
    assert not list(out.glob(".*.tmp*"))
    monkeypatch.setattr(files.torch, "save", real_save)  # space is back
    assert main(["train", "--output", str(out), "--resume"]) == 0
    rows = lambda p: [{k: v for k, v in r.items() if k != "elapsed_s"}  # noqa: E731
                      for r in __import__("csv").DictReader((p / "history.csv").open())]  # fmt: skip
    assert rows(out) == rows(reference) and len(rows(out)) == 3
    a, b = (torch.load(p / "last.ckpt", weights_only=True)["state_dict"] for p in (reference, out))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_ctrl_c_exits_130_with_the_resume_command(tmp_path):
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "cspnet.cli.main", "train", *TINY, "--epochs", "3", "--checkpoint-every", "1",
            "--output", str(out)]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (out / "last.ckpt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert f"interrupted; resume with: cspnet train --output {out} --resume" in err
    assert "Traceback" not in err
    torch.load(out / "last.ckpt", weights_only=True)  # loadable


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--warmup-epochs", "inf"], "--warmup-epochs inf is invalid: expected a finite number"),
        (["--lr", "inf"], "--lr inf is invalid"),
        (["--lr", "nan"], "--lr nan is invalid"),
        (["--weight-decay", "-1"], "--weight-decay -1.0 is invalid"),
        (["--hflip", "5"], "--hflip 5.0 is invalid: expected 0.0 <= hflip <= 1.0"),
        (["--mixup", "nan"], "--mixup nan is invalid"),
        (["--devices", "0"], "--devices 0 is invalid"),
        (["--num-nodes", "0"], "--num-nodes 0 is invalid"),
        (["--img-size", "100000"], "--img-size 100000 is invalid: expected 1 <= img_size <= 4096"),
        (["--img-size", "1"], "too small for cspdensenet_bc40"),
        (["--epochs", "0"], "--epochs 0 is invalid"),
        (["--batch-size", "-3"], "--batch-size -3 is invalid"),
        (["--crop-pct", "0"], "--crop-pct 0.0 is invalid"),
        (["--momentum", "1"], "--momentum 1.0 is invalid"),
        (["--pretrained", "{tmp}/missing.pt"], "--pretrained {tmp}/missing.pt: file not found"),
    ],
)
def test_bad_training_settings_are_one_line_errors_before_anything_runs(flags, message, tmp_path, capsys):
    flags = [f.format(tmp=tmp_path) for f in flags]
    err = one_line_error(capsys, ["train", *flags, "--output", str(tmp_path / "out")])
    assert message.format(tmp=tmp_path) in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_gpu_accelerator_without_a_gpu_is_a_one_line_error(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    err = one_line_error(capsys, ["train", "--accelerator", "gpu", "--output", str(tmp_path / "out")])
    assert "no CUDA GPU is visible" in err


FINITE = st.floats(allow_nan=True, allow_infinity=True)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(["lr", "weight_decay", "momentum", "warmup_epochs", "min_lr_ratio", "mixup", "cutmix",
                              "label_smoothing", "hflip", "crop_scale", "jitter", "ema_decay", "val_fraction",
                              "crop_pct"]),
       value=FINITE)  # fmt: skip
def test_validation_accepts_exactly_the_declared_ranges(field, value):
    """Any float for any numeric setting: validate() either accepts it or raises a ValueError naming the flag,
    and what it accepts is finite."""
    config = TrainConfig(**{field: value})
    try:
        config.validate()
    except ValueError as exc:
        assert f"--{field.replace('_', '-')} " in str(exc)
    else:
        assert value == value and abs(value) != float("inf")


def test_fine_tuning_from_a_training_checkpoint_with_other_classes(finished_run, tmp_path, caplog):
    """--pretrained FILE on a 2-class folder: the 10-class head is re-initialised, with a warning."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (tmp_path / "data" / c).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(tmp_path / "data" / c / f"{i}.png")
    out = tmp_path / "tuned"
    with caplog.at_level("WARNING"):
        result = fit(TrainConfig(model="cspdensenet_bc100", model_overrides={"block_config": (1, 1, 1), "growth_rate": 6},
                                 img_size=8, epochs=1, data=str(tmp_path / "data"), workers=0,
                                 pretrained=str(finished_run / "last.ckpt"), output=str(out)),
                     verbose=False)  # fmt: skip
    assert "classifier not loaded" in caplog.text
    assert result.metrics["top1"] is not None
    from cspnet.training import load_trained

    trained = load_trained(out / "last.ckpt")  # needs no --pretrained file any more
    assert trained.class_names == ["cat", "dog"]


def test_bf16_training_on_a_cpu_without_native_bf16_warns(monkeypatch, caplog):
    import cspnet.cpu as cpu
    from cspnet.training.runner import _warn_if_bf16_is_emulated

    monkeypatch.setattr(cpu, "has_native_bf16", lambda: False)
    with caplog.at_level("WARNING"):
        _warn_if_bf16_is_emulated(TrainConfig(precision="bf16-mixed", accelerator="cpu"))
    assert "no native bf16" in caplog.text
    caplog.clear()
    monkeypatch.setattr(cpu, "has_native_bf16", lambda: True)
    with caplog.at_level("WARNING"):
        _warn_if_bf16_is_emulated(TrainConfig(precision="bf16-mixed", accelerator="cpu"))
    assert not caplog.text


@pytest.mark.parametrize(("given", "stored"), [("fp32", "fp32"), ("32", "fp32"), ("32-true", "fp32"),
                                               ("bf16-mixed", "bf16"), ("bf16", "bf16"), ("16-mixed", "fp16")])
def test_one_precision_vocabulary_with_lightning_aliases(given, stored):
    from cspnet.training.runner import restore_run_config

    config = TrainConfig(precision=given)
    assert config.precision == stored
    config.validate()
    # An alias of the run's own precision is not a contradiction on --resume.
    restored = restore_run_config(TrainConfig(precision=given, resume=True), TrainConfig(precision=stored), {"precision"})
    assert restored.precision == stored
