"""Every registered model builds exactly what it built before the stage-factory refactor.

``tests/data/model_reference.json`` was recorded by ``tests/model_reference.py`` on the code before
the change: per model the state-dict layout, the seeded initial weights and the seeded output, all
hashed. Matching hashes mean a checkpoint saved before the change loads unchanged and computes the
same numbers, bit for bit.
"""

from __future__ import annotations

import json

import pytest

import cspnet
from model_reference import REFERENCE, VARIANTS, fingerprint

RECORDED = json.loads(REFERENCE.read_text())["models"]


def test_every_registered_model_has_a_reference() -> None:
    assert sorted(RECORDED) == sorted([*cspnet.list_models(task="classification"), *VARIANTS])


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_model_is_bit_identical_to_the_reference(name: str) -> None:
    ours, recorded = fingerprint(name), RECORDED[name]
    # Readable fields first, so that a failure says what changed before the hashes do.
    for key in ("num_keys", "params", "first_keys", "last_keys", "feature_info", "keys_sha"):
        assert ours[key] == recorded[key], f"{name}: {key} changed"
    assert ours["state_sha"] == recorded["state_sha"], f"{name}: the seeded initial weights changed"
    assert ours["output_head"] == recorded["output_head"], f"{name}: the seeded output changed"
    assert ours["output_sha"] == recorded["output_sha"], f"{name}: the seeded output changed"
