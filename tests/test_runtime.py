"""cspnet.runtime: the process-wide CPU defaults."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from cspnet.runtime import ALLOCATOR_OPT_OUT, tune_cpu_allocator

# Run by the CLI test below: records OMP_WAIT_POLICY at the moment torch is first imported.
_CLI_AT_TORCH_IMPORT = """
import importlib.abc, os, sys
seen = []
class Spy(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and not seen:
            seen.append(os.environ.get("OMP_WAIT_POLICY"))
        return None
sys.meta_path.insert(0, Spy())
from cspnet.cli.main import main
main(["models", "--live", "no-such-model*"])  # --live builds models: torch is imported
print(seen[0] if seen else "torch never imported")
"""


def test_the_cli_waits_passively_before_torch_loads_unless_the_user_chose() -> None:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    run = subprocess.run([sys.executable, "-c", _CLI_AT_TORCH_IMPORT], env=env, capture_output=True, text=True)
    assert run.stdout.strip().splitlines()[-1] == "PASSIVE", run.stderr
    env["OMP_WAIT_POLICY"] = "ACTIVE"
    run = subprocess.run([sys.executable, "-c", _CLI_AT_TORCH_IMPORT], env=env, capture_output=True, text=True)
    assert run.stdout.strip().splitlines()[-1] == "ACTIVE", run.stderr


def test_importing_the_library_leaves_the_policy_alone() -> None:
    code = "import os, cspnet; cspnet.create_model; print(os.environ.get('OMP_WAIT_POLICY', 'unset'))"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True).stdout.strip() == "unset"


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
