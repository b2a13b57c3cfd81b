"""Progress bars for long loops (evaluation, prediction): on standard error, and only when it is a terminal.

A bar is for a person watching: in a log file, a pipe or a test it would be noise (tqdm's redraws
become thousands of lines), so :func:`progress` returns the iterable untouched unless ``sys.stderr``
is a TTY. Training has Lightning's own bar, under the same rule (:mod:`cspnet.training.runner`).

>>> list(progress(range(3), desc="val"))  # not a terminal here: the items, nothing drawn
[0, 1, 2]
>>> say("a.png: 2 object(s)")  # a result line: above a live bar on a terminal, plainly otherwise
a.png: 2 object(s)
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def on_terminal() -> bool:
    """Whether standard error is a terminal a person can watch."""
    isatty = getattr(sys.stderr, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def progress(items: Iterable[T], total: int | None = None, desc: str = "", unit: str = "it") -> Iterator[T]:
    """``items``, with a tqdm bar on standard error while they are consumed when it is a terminal.

    The bar is removed when the loop ends (``leave=False``): the command's result line stays alone.
    """
    if not on_terminal():
        yield from items
        return
    from tqdm import tqdm

    with tqdm(items, total=total, desc=desc, unit=unit, leave=False, file=sys.stderr, dynamic_ncols=True) as bar:
        yield from bar


def say(line: str) -> None:
    """Print ``line`` on standard output; on a terminal, above the live progress bar instead of through it."""
    if on_terminal():
        from tqdm import tqdm

        tqdm.write(line, file=sys.stdout)
    else:
        print(line, flush=True)
