"""Process-wide CPU settings that make PyTorch on a CPU markedly faster, and why.

Nothing here runs on import: the library leaves the process as it finds it (``import cspnet`` sets
no environment variable). The ``cspnet`` command applies these defaults in its entry point
(``cspnet.cli.main.main``); a script or service that wants them calls the functions itself.

Two defaults, both measured on this project's 2-core machine (``docs/benchmarks.md``):

* :func:`default_openmp_wait_policy` (``OMP_WAIT_POLICY=PASSIVE`` unless already set), called first
  thing by every ``cspnet`` command, before torch is imported: OpenMP threads that spin while
  waiting starve each other as soon as another process shares the cores (a DenseNet training step
  took 14 s instead of 0.9 s). On an idle machine passive waiting costs ~5 %. Export
  ``OMP_WAIT_POLICY=ACTIVE`` on a dedicated machine. A library user calls it before the first
  ``import torch`` of the process (or sets the variable in the environment).
* :func:`tune_cpu_allocator`, called by the inference commands (``eval``, ``predict``,
  ``export`` and the inference rows of ``benchmark``): PyTorch's CPU allocator has no
  cache, so each activation tensor is a ``malloc``/``free``; glibc serves blocks above 32 MiB
  with a fresh ``mmap`` and hands them back on ``free``, and the kernel then zero-fills every 4 KiB
  page again on first touch (smaller blocks too, once the heap top is trimmed). A DenseNet-121
  forward at batch 16 allocates dozens of such blocks. Keeping freed memory in the process made
  batch-16 inference 9-28 % faster (``docs/benchmarks.md``: densenet121 21.5 -> 23.4 img/s,
  cspdarknet53 11.1 -> 14.2). Library users call it themselves. ``cspnet train`` does not:
  freed blocks that stay in one heap fragment it, and training peaks rose (densenet201 at batch
  32: 6924 -> 7361 MiB plain, 2965 -> 4071 MiB with ``memory_efficient``). It did speed training
  up (densenet201 at batch 16: 3.5 -> 4.5 img/s), so a training script with memory to spare may
  call it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

log = logging.getLogger(__name__)

# glibc's mallopt() parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_NEVER = -1  # glibc converts the int to size_t: SIZE_MAX, a threshold the heap top never reaches

ALLOCATOR_OPT_OUT = "CSPNET_DEFAULT_MALLOC"
"""Set this environment variable to 1 to keep glibc's defaults in the ``cspnet`` commands."""


def default_openmp_wait_policy() -> None:
    """Make OpenMP threads sleep instead of spin while waiting, unless the user chose otherwise.

    Read by torch's OpenMP runtime when torch is first imported, so this only has an effect before
    that. The ``cspnet`` command calls it first thing; ``import cspnet`` does not.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def tune_cpu_allocator() -> bool:
    """Keep freed memory in the process (glibc): no ``mmap`` per large tensor, no heap trimming.

    The process's resident memory then stays at its high-water mark instead of shrinking after each
    batch, which is what a serving process wants. It changes nothing where the C
    library is not glibc (macOS, Windows, musl), and nothing if ``CSPNET_DEFAULT_MALLOC=1``.

    Returns:
        Whether the allocator was tuned.

    >>> import cspnet.runtime
    >>> cspnet.runtime.tune_cpu_allocator() in (True, False)
    True
    """
    if os.environ.get(ALLOCATOR_OPT_OUT, "") not in ("", "0"):
        return False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _NEVER))
    log.debug("glibc allocator tuned: %s", ok)
    return ok
