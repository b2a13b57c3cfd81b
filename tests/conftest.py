"""Session-wide test settings: quiet OpenMP waiting, a bounded thread count, and seeds.

Random choices (which kill points a resume test samples, Hypothesis's examples) come from one
session seed (``tests/seeding.py``), fresh every session so that CI explores, and printed in
pytest's header and at the end of its summary: ``CSPNET_TEST_SEED=N`` repeats a session. Hypothesis
takes the session seed as its own (``--hypothesis-seed`` overrides it); its example database is then
not consulted, so a CI failure repeats from the printed seed alone.

Test data drawn from the global generators (an unseeded ``torch.randn``, ``create_model``'s
initialisation) is the same in every session instead: ``random``, NumPy and torch are seeded before
each test from the test's id, so a test draws the same numbers alone as in the whole run, whatever
ran before it.
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

from seeding import ENV, fixed_seed, session_seed  # noqa: E402


def _repeat_line() -> str:
    return f"{ENV}={session_seed()} (set it to repeat this session's random choices)"


def pytest_report_header(config: pytest.Config) -> str:
    return _repeat_line()


@pytest.hookimpl(tryfirst=True)  # before Hypothesis's plugin reads the option
def pytest_configure(config: pytest.Config) -> None:
    try:
        seed = session_seed()
    except ValueError as e:
        raise pytest.UsageError(str(e)) from None
    if getattr(config.option, "hypothesis_seed", None) is None:
        config.option.hypothesis_seed = str(seed)


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    terminalreporter.write_line(_repeat_line())


@pytest.fixture(autouse=True)
def _seed_global_generators(request: pytest.FixtureRequest) -> None:
    """Unseeded draws in a test (``torch.randn``, ``create_model``'s init) are the same in every run."""
    seed = fixed_seed(request.node.nodeid)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
