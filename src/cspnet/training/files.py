"""Writing a run's files so that none is ever half-written, and cleaning up after killed writes."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

TEMP_SUFFIX = ".tmp"  # every temporary file of an atomic write ends so (and starts with a dot)


def _file_mode() -> int:
    """The permissions a plain ``open(path, "w")`` would give: 0o666 less the umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], Any]) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, fsync it, then rename it over ``path``.

    A crash mid-write leaves the previous file intact: readers see the old or the new content, never
    a truncated one. A symbolic link at ``path`` is replaced by the file, never followed. The file
    gets the permissions of any other output (``mkstemp`` alone would make it owner-only).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        os.fchmod(fd, _file_mode())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """:func:`atomic_write` of ``data``."""
    atomic_write(path, lambda f: f.write(data))


def atomic_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save`` through :func:`atomic_write`."""
    atomic_write(path, lambda f: torch.save(obj, f))


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete what killed atomic writes left in ``folder`` (``.NAME.*.tmp``); returns what was removed."""
    removed = []
    for path in Path(folder).glob(f".*{TEMP_SUFFIX}"):
        if path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def check_writable(folder: Path) -> None:
    """Create ``folder`` and write a probe file in it: a read-only or missing place fails now, before
    any training, with a one-line message."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe.", suffix=TEMP_SUFFIX, dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise RunFolderError(f"cannot write to --output {folder}: {exc.strerror or exc}") from exc


class RunFolderError(OSError):
    """The run folder cannot be written (read-only, disk full, no permission); the message says which."""
