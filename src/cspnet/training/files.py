"""A run folder's file handling: checkpoints written atomically, the folder checked and locked before training.

The atomic writes themselves are :mod:`cspnet.io`'s (a temporary file beside the target, fsync,
``os.replace``; normal permissions; symlinks replaced, never followed).
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from cspnet.io import atomic_write_bytes, remove_stale_temporaries

__all__ = ["RunFolderError", "atomic_save", "atomic_write_bytes", "check_writable", "remove_stale_temporaries",
           "run_folder_lock"]  # fmt: skip

LOCK_FILE = "run.lock"


def atomic_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save`` through :func:`cspnet.io.atomic_write_bytes`: a crash mid-write leaves the previous file.

    The checkpoint is serialised in memory first and then written by Python's own file I/O: torch's
    zip writer turns a full disk into a ``RuntimeError`` ("unexpected pos") that no longer says why,
    while a plain write raises ``OSError(ENOSPC)``, which the run reports as "the disk is full".
    """
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


class RunFolderError(OSError):
    """The run folder cannot be written (read-only, disk full, no permission); the message says which."""


def check_writable(folder: Path) -> None:
    """Create ``folder`` and write a probe file in it: a read-only or missing place fails now, before
    any training, with a one-line message."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe.", suffix=".tmp", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise RunFolderError(f"cannot write to --output {folder}: {exc.strerror or exc}") from exc


@contextlib.contextmanager
def run_folder_lock(folder: Path, enabled: bool = True) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (the file ``run.lock`` in it, holding this process id) for
    the duration: a second run started into the same folder fails at once, naming the folder and the
    running process, instead of both running and one result being lost.

    The lock is the operating system's (``flock``), so it ends with the process that holds it, however
    it ends: a killed run leaves no stale lock. Where ``fcntl`` is missing (Windows) nothing is locked.
    ``enabled=False`` (the other processes of a distributed run) does nothing.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX
        enabled = False
    if not enabled:
        yield
        return
    path = Path(folder) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise RunFolderError(f"cannot write to --output {folder}: {exc.strerror or exc}") from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise RunFolderError(f"--output {folder} is in use by another run (process {holder}); wait for it to "
                                 "end or choose another --output") from None  # fmt: skip
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        # Unlock explicitly before closing: a data-loader worker forked during the run shares this open
        # file and would otherwise keep the lock alive after the run ended (a resume in the same
        # process, straight after a crash, then found its own folder "in use").
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
