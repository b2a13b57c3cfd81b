"""Training: a tiny run learns, a run killed mid-epoch resumes to the identical result, DDP on CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from cspnet.training import TrainConfig, fit, load_trained

# A DenseNet-BC with 2 layers per stage on 8x8 digits: seconds per epoch on 2 cores.
TINY = {"model": "cspdensenet_bc100", "model_overrides": {"block_config": (2, 2, 2)}, "img_size": 8}


def tiny_config(output: Path, **kwargs) -> TrainConfig:
    return TrainConfig(**{**TINY, "epochs": 2, "output": str(output), **kwargs})


class KillAfter(L.Callback):
    """Simulates a crash: raises after ``steps`` optimizer steps (after the periodic checkpoint)."""

    def __init__(self, steps: int) -> None:
        self.steps = steps

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step >= self.steps:
            raise RuntimeError("simulated crash")


def test_tiny_run_learns_and_writes_its_outputs(tmp_path):
    result = fit(tiny_config(tmp_path / "run"), verbose=False)
    assert result.metrics["top1"] > 50  # chance is 10%
    out = result.output
    for name in ("last.ckpt", "best.ckpt", "metrics.json", "history.csv", "learning_curves.png", "config.json",
                 "config.yaml"):
        assert (out / name).is_file(), name
    assert list((out / "tensorboard").rglob("events.out.tfevents.*"))
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"top1", "top5", "loss"} <= set(metrics)
    assert len((out / "history.csv").read_text().splitlines()) == 3  # header + 2 epochs
    trained = load_trained(out / "last.ckpt")
    assert trained.class_names == [str(i) for i in range(10)] and trained.img_size == 8
    assert not list(out.glob(".*.tmp*"))  # atomic writes leave no temporaries


@pytest.mark.slow  # two training runs
def test_resume_after_a_mid_epoch_crash_matches_an_uninterrupted_run(tmp_path):
    # 22 steps per epoch; checkpoints every 4 steps; the crash at step 31 (epoch 2, batch 9) loses
    # steps 29-31, which the resumed run must redo with the same data and the same random draws.
    reference = fit(tiny_config(tmp_path / "ref", checkpoint_every=4), verbose=False)
    crashed = tiny_config(tmp_path / "crash", checkpoint_every=4)
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(crashed, callbacks=[KillAfter(31)], verbose=False)
    ckpt = torch.load(tmp_path / "crash" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 28 and ckpt["cspnet_position"] == {"epoch": 1, "batches": 6}
    resumed = fit(tiny_config(tmp_path / "crash", checkpoint_every=4, resume=True), verbose=False)

    a = torch.load(tmp_path / "ref" / "last.ckpt", weights_only=True)
    b = torch.load(tmp_path / "crash" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"]
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][key], value, rtol=0, atol=0, msg=key)
    for key, value in a["ema_state_dict"]["module"].items():
        torch.testing.assert_close(b["ema_state_dict"]["module"][key], value, rtol=0, atol=0, msg=key)
    assert resumed.metrics["top1"] == reference.metrics["top1"]
    assert resumed.metrics["loss"] == reference.metrics["loss"]


def test_resume_needs_a_checkpoint_and_a_fresh_run_an_empty_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        fit(tiny_config(tmp_path / "none", resume=True), verbose=False)


@pytest.mark.slow  # two processes
def test_two_process_ddp_on_cpu(tmp_path):
    """``--devices 2`` launches a second process (gloo) and reaches the single-process accuracy range."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "cspnet.cli.main", "train", "--override", "block_config=[2,2,2]", "--img-size", "8",
           "--epochs", "2", "--batch-size", "32", "--devices", "2", "--output", str(tmp_path / "ddp")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    assert metrics["top1"] > 50
