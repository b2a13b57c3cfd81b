"""cspnet.runtime: the process-wide CPU defaults."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from cspnet.runtime import ALLOCATOR_OPT_OUT, tune_cpu_allocator


def test_openmp_waits_passively_unless_the_user_chose() -> None:
    code = "import os, cspnet; print(os.environ['OMP_WAIT_POLICY'])"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True).stdout.strip() == "PASSIVE"
    env["OMP_WAIT_POLICY"] = "ACTIVE"
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True).stdout.strip() == "ACTIVE"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_allocator_keeps_freed_memory_on_glibc() -> None:
    code = """
import torch
from cspnet.runtime import tune_cpu_allocator
def rss():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS"))
print(tune_cpu_allocator())
x = torch.ones(64 * 2**20)  # 256 MiB, touched
before = rss(); del x
print(before - rss() < 64 * 1024)  # freed, yet still mapped: well under a quarter released
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.split()
    assert out == ["True", "True"]


def test_allocator_tuning_can_be_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ALLOCATOR_OPT_OUT, "1")
    assert tune_cpu_allocator() is False
