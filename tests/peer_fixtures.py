"""Rebuild the peers' fixture weights (see ../shared/fixtures/README.md) and compare outputs."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch

FIXTURES = Path(os.environ.get("CSPNET_FIXTURES", Path(__file__).resolve().parents[2] / "shared" / "fixtures"))


def load_fixture(name: str) -> dict[str, Any]:
    path = FIXTURES / name
    if not path.is_file():
        # Outside the project's checkout layout (a bare clone) the parity tests cannot run; in CI,
        # where shared/ sits beside the checkout, a missing fixture is a failure, never a skip.
        if os.environ.get("CI"):
            pytest.fail(f"fixture {path} not found (set CSPNET_FIXTURES)")
        pytest.skip(f"fixture {path} not present")
    return json.loads(path.read_text())


_DTYPES = {"torch.float32": torch.float32, "torch.int64": torch.int64}


def fixture_state_dict(fixture: dict[str, Any], drop_num_batches_tracked: bool = False) -> dict[str, torch.Tensor]:
    """The state dict the fixture's weight rule defines, drawn in ``keys`` order from one generator."""
    gen = torch.Generator().manual_seed(fixture.get("weight_seed", 0))
    state: dict[str, torch.Tensor] = {}
    for key, shape, dtype in fixture["keys"]:
        dtype = _DTYPES[dtype]
        if not dtype.is_floating_point:
            if not drop_num_batches_tracked:
                state[key] = torch.zeros(shape, dtype=dtype)
            continue
        if key.endswith("running_var"):
            value = 0.5 + torch.rand(shape, generator=gen)
        elif key.endswith("running_mean"):
            value = 0.1 * torch.randn(shape, generator=gen)
        elif len(shape) >= 2:
            fan_in = 1
            for s in shape[1:]:
                fan_in *= s
            value = torch.randn(shape, generator=gen) * (1 / fan_in) ** 0.5
        elif key.endswith("weight"):
            value = 1 + 0.1 * torch.randn(shape, generator=gen)
        else:
            value = 0.1 * torch.randn(shape, generator=gen)
        state[key] = value
    return state


def fixture_input(fixture: dict[str, Any]) -> torch.Tensor:
    return torch.randn(fixture["input_shape"], generator=torch.Generator().manual_seed(fixture["input_seed"]))


def assert_matches_logits(output: torch.Tensor, fixture: dict[str, Any], rtol: float = 1e-4) -> None:
    expected = torch.tensor(fixture["logits"], dtype=torch.float32)
    assert output.shape == expected.shape
    scale = expected.abs().max().item()
    err = (output - expected).abs().max().item()
    assert err <= rtol * scale, f"max abs error {err:.3g} exceeds {rtol} x {scale:.3g}"
