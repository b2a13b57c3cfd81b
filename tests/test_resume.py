"""Exact resume from every kill point: a run killed anywhere and resumed equals one uninterrupted run.

The kill points of a small run (2 epochs of 6 steps): after each optimizer step, at the start of
each validation (training of the epoch done, validation not) and after each epoch-end checkpoint;
with a checkpoint after every step, and every 5 steps (a kill then loses the steps since the last
checkpoint, which the resumed run redoes). CI runs every point of the first and a random sample of
the second; the fast default run, a random few of those (the rest are marked slow). The samples are
drawn from the session seed (``CSPNET_TEST_SEED``, printed by pytest: a failure repeats with it; the
ids name the points). ``CSPNET_RESUME_CASES=all`` (``make resume-check``) runs all of them.
For each, the resumed run must end with the reference's step count, weights, EMA, metrics and
``history.csv`` (all but the wall-clock column). A real ``kill -9`` of the CLI is tested too.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch

from cspnet.training import TrainConfig, fit
from seeding import rng

RUN = {"model": "cspdensenet_bc100", "model_overrides": {"block_config": (1, 1, 1), "growth_rate": 6},
       "img_size": 8, "epochs": 2, "batch_size": 256, "checkpoint_every": 1}  # fmt: skip
STEPS_PER_EPOCH = 6  # 1438 digits in batches of 256; the last, partial one (158) is kept
KILL_POINTS = (
    [("step", s) for s in range(1, 2 * STEPS_PER_EPOCH + 1)]
    + [("validation_start", e) for e in (1, 2)]
    + [("validation_end", e) for e in (1, 2)]
)
SAMPLE = 3  # of the checkpoint-every-5 points, in CI
FAST = 3  # of the cases CI runs, in the fast default run


def _cases() -> list:
    every_step = [(1, where, when) for where, when in KILL_POINTS]
    every_five = [(5, where, when) for where, when in KILL_POINTS]
    if os.environ.get("CSPNET_RESUME_CASES") == "all":
        return every_step + every_five
    cases = every_step + rng("test_resume kill points").sample(every_five, SAMPLE)
    fast = rng("test_resume fast kill points").sample(cases, FAST)
    return [pytest.param(*c, marks=() if c in fast else pytest.mark.slow) for c in cases]


class Crash(RuntimeError):
    pass


class KillAt(L.Callback):
    """Raises at one point of the run; placed after the run's own callbacks, so after their checkpoint."""

    def __init__(self, where: str, when: int) -> None:
        self.where, self.when = where, when

    def on_train_batch_end(self, trainer, *args) -> None:
        if self.where == "step" and trainer.global_step == self.when:
            raise Crash(f"killed after step {self.when}")

    def on_validation_start(self, trainer, *args) -> None:
        if self.where == "validation_start" and trainer.current_epoch + 1 == self.when:
            raise Crash(f"killed before validation {self.when}")

    def on_validation_end(self, trainer, *args) -> None:
        if self.where == "validation_end" and trainer.current_epoch + 1 == self.when:
            raise Crash(f"killed after validation {self.when}")


def config(output: Path, **kwargs) -> TrainConfig:
    return TrainConfig(**{**RUN, "output": str(output), **kwargs})


def history_without_time(folder: Path) -> list[dict[str, str]]:
    with (folder / "history.csv").open(newline="") as f:
        return [{k: v for k, v in row.items() if k != "elapsed_s"} for row in csv.DictReader(f)]


def assert_same_run(reference: Path, resumed: Path) -> None:
    a = torch.load(reference / "last.ckpt", weights_only=True)
    b = torch.load(resumed / "last.ckpt", weights_only=True)
    assert b["global_step"] == a["global_step"] == 2 * STEPS_PER_EPOCH
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][key], value, rtol=0, atol=0, msg=key)
    for key, value in a["ema_state_dict"]["module"].items():
        torch.testing.assert_close(b["ema_state_dict"]["module"][key], value, rtol=0, atol=0, msg=key)
    assert b["ema_state_dict"]["updates"] == a["ema_state_dict"]["updates"]
    ma, mb = (json.loads((f / "metrics.json").read_text()) for f in (reference, resumed))
    for key in ("top1", "top5", "loss", "best_top1", "epochs"):
        assert mb[key] == ma[key], key
    assert history_without_time(resumed) == history_without_time(reference)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference") / "run"
    fit(config(out), verbose=False)
    return out


@pytest.mark.parametrize(("every", "where", "when"), _cases(), ids=lambda v: str(v))
def test_a_run_killed_here_resumes_to_the_uninterrupted_result(every, where, when, reference, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(Crash):
        fit(config(out, checkpoint_every=every), callbacks=[KillAt(where, when)], verbose=False)
    if not (out / "last.ckpt").exists():  # killed before the first checkpoint: the run starts over
        import shutil

        shutil.rmtree(out)
        fit(config(out, checkpoint_every=every), verbose=False)
    else:
        fit(config(out, resume=True), verbose=False)
    assert_same_run(reference, out)


def test_resume_twice_in_a_row(reference, tmp_path):
    """Killed, resumed, killed again in the next epoch, resumed: still the same run."""
    out = tmp_path / "run"
    with pytest.raises(Crash):
        fit(config(out), callbacks=[KillAt("step", 3)], verbose=False)
    with pytest.raises(Crash):
        fit(config(out, resume=True), callbacks=[KillAt("step", STEPS_PER_EPOCH + 2)], verbose=False)
    fit(config(out, resume=True), verbose=False)
    assert_same_run(reference, out)


def test_resuming_a_finished_run_reports_its_metrics(reference, tmp_path):
    import shutil

    out = tmp_path / "done"
    shutil.copytree(reference, out)
    (out / "metrics.json").unlink()
    result = fit(config(out, resume=True), verbose=False)
    assert result.metrics["top1"] == json.loads((reference / "metrics.json").read_text())["top1"]


@pytest.mark.slow  # two CLI processes
def test_kill_9_of_the_cli_then_resume(reference, tmp_path):
    """The user's way: ``kill -9`` as soon as the first mid-epoch checkpoint appears, then --resume."""
    out = tmp_path / "cli"
    argv = [sys.executable, "-m", "cspnet.cli.main", "train", "--model", RUN["model"],
            "--set", "block_config=(1, 1, 1)", "--set", "growth_rate=6", "--img-size", "8", "--epochs", "2",
            "--batch-size", "256", "--checkpoint-every", "1", "--output", str(out)]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not (out / "last.ckpt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:] if proc.stderr else ""
    done = subprocess.run([*argv[:4], "--output", str(out), "--resume"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not list(out.glob(".*.tmp*"))  # what the killed write left behind was cleaned up
    assert_same_run(reference, out)
