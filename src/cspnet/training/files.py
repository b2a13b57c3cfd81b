"""A run folder's file handling: checkpoints written atomically, the folder checked before training.

The atomic writes themselves are :mod:`cspnet.io`'s (a temporary file beside the target, fsync,
``os.replace``; normal permissions; symlinks replaced, never followed).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from cspnet.io import atomic_write, atomic_write_bytes, remove_stale_temporaries

__all__ = ["RunFolderError", "atomic_save", "atomic_write_bytes", "check_writable", "remove_stale_temporaries"]


def atomic_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save`` through :func:`cspnet.io.atomic_write`: a crash mid-write leaves the previous file."""
    atomic_write(path, lambda f: torch.save(obj, f))


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
