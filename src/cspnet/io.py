"""Writing output files safely: atomically, with normal permissions, never through a symlink.

:func:`atomic_write_text` / :func:`atomic_write_bytes` write a temporary file in the target's folder
and ``os.replace`` it onto the target. A reader never sees half a file; an interrupted write leaves
the old file (and at worst a ``.<name>.*.tmp*`` file, removed by :func:`remove_stale_temporaries`).
``os.replace`` replaces a symlink at the target path itself, so an output never overwrites the file
a link points to. The result gets ``0o666`` less the umask (``0o644`` usually), like any file the
user creates: ``tempfile.mkstemp`` makes ``0o600`` files, so the mode is set explicitly.
:func:`dumps_json` writes NaN and infinity as ``null`` (bare ``NaN`` is not JSON).

>>> import json, tempfile, pathlib
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> path = atomic_write_text(folder / "m.json", dumps_json({"top1": float("nan"), "n": [1.5, float("inf")]}))
>>> json.loads(path.read_text())
{'top1': None, 'n': [1.5, None]}
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, TypeVar

T = TypeVar("T")
TEMP_MARK = ".tmp"  # temporaries are ``.<name>.<random>.tmp<suffix>``: the real suffix last, for writers
# that pick the format from it (matplotlib's savefig)


def _temporary(path: Path) -> tuple[int, str]:
    return tempfile.mkstemp(prefix=f".{path.name}.", suffix=f"{TEMP_MARK}{path.suffix}", dir=path.parent)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_output_file(path: str | os.PathLike[str], what: str = "--output") -> Path:
    """``path`` as a writable file path, else ``ValueError`` / ``OSError`` naming the problem.

    Refused: an existing folder, a parent that is a file, a folder that cannot be written.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{what} {path} is a folder: give a file name, e.g. {path / 'model.onnx'}")
    parent = path.parent
    existing = next((p for p in (parent, *parent.parents) if p.exists()), Path("."))
    if not existing.is_dir():
        raise NotADirectoryError(f"{what} {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"{what} {path}: cannot write in {existing}")
    return path


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary path next to ``path`` for a writer that wants a file name (``savefig``, exporters).

    When the block ends normally the temporary file is given normal permissions and moved onto
    ``path`` (replacing a symlink there, never its target); when it raises, it is deleted.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = _temporary(path)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_checked(path: str | os.PathLike[str], write: Callable[[Path], Any],
                  check: Callable[[Path], T] | None = None) -> T | None:  # fmt: skip
    """Write ``path`` through a temporary file beside it, check it, and only then move it into place.

    ``write(tmp)`` writes the file (any writer that takes a file name: exporters, quantisers);
    ``check(tmp)`` reads it back and raises to refuse it. A file that fails its check, a writer that
    fails, a full disk or Ctrl-C leave ``path`` as it was (absent, or the previous file) and no
    temporary behind. Returns what ``check`` returned. An ``OSError`` of the write names ``path``
    (not the temporary) with the system's reason, e.g. ``No space left on device``.

    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "m.txt"
    >>> def refuse(p):
    ...     raise ValueError(f"{p.read_text()!r} failed its check")
    >>> write_checked(out, lambda p: p.write_text("bad"), refuse)
    Traceback (most recent call last):
    ...
    ValueError: 'bad' failed its check
    >>> out.exists(), list(out.parent.iterdir())
    (False, [])
    >>> write_checked(out, lambda p: p.write_text("good"), lambda p: p.read_text())
    'good'
    """
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            write(tmp)
            _fsync(tmp)
            return check(tmp) if check is not None else None
    except OSError as exc:
        about_tmp = exc.filename is None or Path(str(exc.filename)).name.startswith(f".{path.name}.")
        if exc.errno is None or not about_tmp:  # another file's problem (an input): its own message
            raise
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(file)`` on a temporary file beside ``path``, fsync it, then move it onto ``path``
    (see the module docstring); returns the path. Checkpoints go through here too."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _temporary(path)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see the module docstring); returns the path."""
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def remove_stale_temporaries(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files interrupted atomic writes left in ``folder``; returns them."""
    removed = []
    for tmp in Path(folder).glob(f".*{TEMP_MARK}*"):
        if tmp.is_file() and not tmp.is_symlink():
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def dumps_json(obj: Any, indent: int | None = 2) -> str:
    """``json.dumps`` with NaN and infinity as ``null``, and a final newline (always valid JSON)."""
    return json.dumps(_finite(obj), indent=indent, allow_nan=False) + "\n"
