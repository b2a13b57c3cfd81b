"""One seed per test session for every random choice the tests make, printed so that a failure can be repeated.

``CSPNET_TEST_SEED=N pytest ...`` repeats the choices of the session that printed ``N`` (pytest prints
it in its header and at the end of the summary); without it a fresh seed is drawn, so that CI
explores other kill points and other generated examples on every run. Each purpose draws from its
own generator, derived from the session seed and the purpose's name: running one file or one test
alone with the same seed draws what it drew in the whole session.

>>> rng("kill points").sample(range(100), 3) == rng("kill points").sample(range(100), 3)
True
"""

from __future__ import annotations

import os
import random

ENV = "CSPNET_TEST_SEED"


def session_seed() -> int:
    """``CSPNET_TEST_SEED`` if set; else a fresh seed, stored there so that the rest of the session
    (and the processes it starts) sees the same one."""
    value = os.environ.get(ENV, "").strip()
    if not value:
        value = str(random.SystemRandom().randrange(10**6))
        os.environ[ENV] = value
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{ENV}={value!r} is invalid: expected an integer") from None


def rng(purpose: str) -> random.Random:
    """The generator of one purpose (a module's sample of kill points, a test's data)."""
    return random.Random(f"{session_seed()}:{purpose}")


def seed_for(purpose: str) -> int:
    """A 32-bit seed for generators that take an integer (torch, NumPy), derived like ``rng``."""
    return rng(purpose).getrandbits(32)


def fixed_seed(purpose: str) -> int:
    """A 32-bit seed that depends on ``purpose`` alone, the same in every session."""
    return random.Random(purpose).getrandbits(32)
