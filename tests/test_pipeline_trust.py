"""The one training pipeline keeps its promises for every task, tried the way users hit them.

Each test runs for both tasks (``cspnet train`` on a tiny DenseNet, ``cspnet detect train`` on a
tiny EFM detector and a YOLO set of coloured shapes): a check written once in the pipeline must
hold for both, or it is a copy that drifted.

* SIGTERM (a scheduler stopping a job) exits 143 with the resume command, never 0, and the run resumes
  to the uninterrupted result;
* a second run started into the same ``--output`` is refused while the first writes it;
* ``--resume --epochs N`` below the epochs a run has done is refused, its files untouched;
* a loss that becomes non-finite stops the run with one line; the last checkpoint stays loadable;
* a file-size limit hit while writing a checkpoint (a real failed write, not a mock) is one line,
  and the previous checkpoint stays whole;
* a resumed run says where it resumes.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cspnet.cli.main import main
from detection_data import make_shapes

CLASSIFY = ["train", "--model", "cspdensenet_bc100", "--set", "block_config=(1, 1, 1)", "--set", "growth_rate=6",
            "--img-size", "8", "--batch-size", "256"]  # fmt: skip
TASKS = ("classification", "detection")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return make_shapes(tmp_path_factory.mktemp("pipeline") / "shapes", 8, seed=3)


def command(task: str, shapes: Path) -> list[str]:
    """The training command of ``task``, tiny: a few steps per epoch on the CPU."""
    if task == "classification":
        return list(CLASSIFY)
    return ["detect", "train", "--data", str(shapes), "--set", "neck_widths=(8, 16, 32)", "--img-size", "64",
            "--batch-size", "2"]  # fmt: skip


def cli(argv: list[str]) -> list[str]:
    return [sys.executable, "-m", "cspnet.cli.main", *argv]


def one_line_error(capsys, argv: list[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "last.ckpt", weights_only=True)["state_dict"]


def wait_for(path: Path, proc: subprocess.Popen, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert path.exists(), f"{path} never appeared (exit {proc.poll()})"


@pytest.mark.slow
@pytest.mark.parametrize("task", TASKS)
def test_sigterm_exits_143_with_the_resume_command_and_the_run_resumes_exactly(task, shapes, tmp_path):
    base = [*command(task, shapes), "--epochs", "4", "--checkpoint-every", "1"]
    reference = tmp_path / "reference"
    assert subprocess.run(cli([*base, "--output", str(reference)]), capture_output=True, timeout=900).returncode == 0
    out = tmp_path / "run"
    proc = subprocess.Popen(cli([*base, "--output", str(out)]), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(out / "last.ckpt", proc)
    proc.send_signal(signal.SIGTERM)
    stdout, err = proc.communicate(timeout=300)
    prefix = "cspnet train" if task == "classification" else "cspnet detect train"
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert f"interrupted; resume with: {prefix} --output {out} --resume" in err and "Traceback" not in err
    assert not (out / "metrics.json").exists()  # an unfinished run reports nothing as final
    resumed = subprocess.run(cli([*prefix.split()[1:], "--output", str(out), "--resume"]), capture_output=True,
                             text=True, timeout=900)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming {out} at epoch" in resumed.stdout
    a, b = weights(reference), weights(out)
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=0, msg=key)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("task", TASKS)
def test_a_signal_to_the_whole_process_group_stops_the_run_with_its_workers(task, sig, shapes, tmp_path):
    """A scheduler's SIGTERM or a terminal's Ctrl-C reaches the DataLoader workers too: the run still ends
    with 128 + the signal and the resume command, not with "DataLoader worker killed" as an internal error."""
    out = tmp_path / "run"
    argv = [*command(task, shapes), "--epochs", "50", "--checkpoint-every", "1", "--workers", "2", "--output", str(out)]
    proc = subprocess.Popen(cli(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    wait_for(out / "last.ckpt", proc)
    os.killpg(proc.pid, sig)
    _, err = proc.communicate(timeout=300)
    prefix = "cspnet train" if task == "classification" else "cspnet detect train"
    assert proc.returncode == 128 + sig, err[-2000:]
    assert f"interrupted; resume with: {prefix} --output {out} --resume" in err and "Traceback" not in err


@pytest.mark.parametrize("task", TASKS)
def test_a_second_run_into_a_folder_in_use_is_refused(task, shapes, tmp_path, capsys):
    from cspnet.training.files import run_folder_lock

    out = tmp_path / "run"
    out.mkdir()
    with run_folder_lock(out):  # a run holds the folder (the lock is the operating system's: per open file)
        err = one_line_error(capsys, [*command(task, shapes), "--epochs", "1", "--output", str(out)])
    assert f"--output {out} is in use by another run (process {os.getpid()})" in err
    assert not (out / "last.ckpt").exists() and not (out / "config.json").exists()
    # Free again once the holder has gone.
    assert main([*command(task, shapes), "--epochs", "1", "--limit-train-batches", "1", "--output", str(out)]) == 0


def test_the_folder_is_free_once_the_run_ends_even_if_a_forked_worker_lives_on(tmp_path):
    """A data-loader worker forked during the run shares the lock's open file; a resume in the same process
    straight after a crash must not find its own folder "in use" because that worker has not exited yet."""
    from cspnet.training.files import run_folder_lock

    with run_folder_lock(tmp_path):
        child = os.fork()
        if child == 0:  # the "worker": holds the inherited descriptor for a while, then leaves
            time.sleep(3)
            os._exit(0)
    try:
        with run_folder_lock(tmp_path):  # would raise "in use by another run" while the child lives
            pass
    finally:
        os.kill(child, 9)
        os.waitpid(child, 0)


@pytest.mark.slow
def test_two_real_processes_into_one_folder(tmp_path):
    out = tmp_path / "run"
    first = subprocess.Popen(cli([*CLASSIFY, "--epochs", "3", "--checkpoint-every", "1", "--output", str(out)]),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    wait_for(out / "run.lock", first)
    time.sleep(0.5)  # the lock is taken right after the file is created
    second = subprocess.run(cli([*CLASSIFY, "--epochs", "3", "--output", str(out)]), capture_output=True, text=True,
                            timeout=300)  # fmt: skip
    first.communicate(timeout=600)
    assert first.returncode == 0
    assert second.returncode == 2, second.stderr
    assert "in use by another run" in second.stderr or "already holds a run" in second.stderr, second.stderr


@pytest.fixture(scope="module")
def finished(shapes, tmp_path_factory) -> dict[str, Path]:
    """A finished 2-epoch run of each task."""
    runs = {}
    for task in TASKS:
        out = tmp_path_factory.mktemp(task) / "run"
        assert main([*command(task, shapes), "--epochs", "2", "--limit-train-batches", "2", "--output", str(out)]) == 0
        runs[task] = out
    return runs


@pytest.mark.parametrize("task", TASKS)
def test_resume_with_fewer_epochs_than_done_is_refused_and_changes_nothing(task, finished, capsys):
    run = finished[task]
    before = {name: (run / name).read_bytes() for name in ("metrics.json", "config.json", "history.csv")}
    prefix = ["train"] if task == "classification" else ["detect", "train"]
    err = one_line_error(capsys, [*prefix, "--output", str(run), "--resume", "--epochs", "1"])
    assert "--epochs 1 is invalid: this run has already trained 2 epochs" in err
    assert {name: (run / name).read_bytes() for name in before} == before


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("flag", ["--lr", "--weight-decay"])
def test_a_diverging_run_stops_with_one_line_and_keeps_its_last_checkpoint(task, flag, shapes, tmp_path, capsys):
    out = tmp_path / "run"
    optimizer = ["--optimizer", "sgd"] if flag == "--lr" else ["--optimizer", "adamw", "--lr", "0.1"]
    err = one_line_error(capsys, [*command(task, shapes), *optimizer, flag, "1e30", "--epochs", "3",
                                  "--checkpoint-every", "1", "--output", str(out)])  # fmt: skip
    assert "training stopped at epoch 1" in err and "diverged" in err and "last.ckpt" in err, err
    assert not (out / "metrics.json").exists()
    if (out / "last.ckpt").exists():  # every checkpoint written holds finite weights
        for key, value in weights(out).items():
            assert torch.isfinite(value).all() if value.is_floating_point() else True, key


def _limit_file_size(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    return apply


@pytest.mark.parametrize("task", TASKS)
def test_a_failed_checkpoint_write_is_one_line_and_the_previous_checkpoint_stays_whole(task, shapes, tmp_path):
    """A real write failure (the process's file-size limit, set below one checkpoint): torch's own zip
    writer would report it as ``RuntimeError: [enforce fail at inline_container.cc] ... unexpected pos``."""
    out = tmp_path / "run"
    first = subprocess.run(cli([*command(task, shapes), "--epochs", "1", "--limit-train-batches", "1",
                                "--output", str(out)]), capture_output=True, text=True, timeout=600)  # fmt: skip
    assert first.returncode == 0, first.stderr[-2000:]
    whole = (out / "last.ckpt").read_bytes()
    limit = len(whole) // 2  # config.json, history.csv and the lock still fit; a checkpoint does not
    again = subprocess.run(cli([*command(task, shapes)[: 1 if task == "classification" else 2], "--output", str(out),
                                "--resume", "--epochs", "2"]),
                           capture_output=True, text=True, timeout=600, preexec_fn=_limit_file_size(limit))  # fmt: skip
    assert again.returncode == 2, again.stderr[-3000:]
    err = [line for line in again.stderr.strip().splitlines() if "error:" in line]
    assert len(err) == 1 and "Traceback" not in again.stderr, again.stderr[-3000:]
    assert "cannot write" in err[0] and ".ckpt" in err[0] and "resume with" in err[0], err[0]
    assert (out / "last.ckpt").read_bytes() == whole
    assert not list(out.glob(".*.tmp*"))


def test_metrics_json_names_its_task(finished):
    for task, run in finished.items():
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["task"] == task
        assert ("best_top1" if task == "classification" else "best_map") in metrics
