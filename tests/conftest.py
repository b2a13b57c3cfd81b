"""Session-wide test settings: quiet OpenMP waiting, a bounded thread count, and one printed seed.

Seeds: every random choice of the tests comes from one session seed (``tests/seeding.py``), printed
in pytest's header and at the end of its summary; ``CSPNET_TEST_SEED=N`` repeats a session. The
global generators of ``random``, NumPy and torch are seeded before each test from the session seed
and the test's id, so a test draws the same data alone as in the whole run. Hypothesis takes the
session seed too (``--hypothesis-seed`` overrides it): its examples are then a function of the
printed seed, and its example database is not consulted, so a CI failure repeats from the seed alone.
"""

import os
import random
import sys
from pathlib import Path

# Spinning OpenMP threads starve each other when other processes share the cores (a busy CI runner,
# the DDP tests' workers): a small forward pass then runs 100x slower. Passive waiting avoids that.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

# Tests import helpers (peer_fixtures, seeding) from this folder; keep CPU work predictable on small machines.
sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))

from seeding import ENV, seed_for, session_seed  # noqa: E402


def _repeat_line() -> str:
    return f"{ENV}={session_seed()} (set it to repeat this session's random choices)"


def pytest_report_header(config: pytest.Config) -> str:
    return _repeat_line()


@pytest.hookimpl(tryfirst=True)  # before Hypothesis's plugin reads the option
def pytest_configure(config: pytest.Config) -> None:
    if getattr(config.option, "hypothesis_seed", None) is None:
        config.option.hypothesis_seed = str(session_seed())


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    terminalreporter.write_line(_repeat_line())


@pytest.fixture(autouse=True)
def _seed_global_generators(request: pytest.FixtureRequest) -> None:
    """Unseeded draws in a test (``torch.randn``, ``create_model``'s init) repeat with the session seed."""
    seed = seed_for(request.node.nodeid)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
