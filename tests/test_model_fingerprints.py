"""Every registered model builds what it built when its fingerprint was recorded.

``tests/data/model_reference.json`` holds, per model (``tests/model_reference.py`` says what and
how): the state-dict layout, compared exactly; the seeded initial weights and the forward pass,
compared with tolerances. Matching layouts mean a checkpoint saved earlier loads unchanged; matching
numbers mean the model computes what it computed then.

The tolerances sit between float noise and real changes; both sides are tested here. On one Intel
Xeon (AMX, AVX-512), across ATEN_CPU_CAPABILITY=default/avx2/avx512, oneDNN limited to AVX2 or
disabled, and channels-last, the outputs of all 34 fingerprints moved by at most 5e-6 of their RMS
(the logits 2e-6 of the largest) and the seeded initial weights by 1.2e-6 (the scalar ``normal_``
of ``default`` differs from the vectorised one by about 1e-7 per weight). Noise of 1e-6 relative on
every weight moved the outputs by at most 2e-5; the one weight the output depends on most, in the
first, middle or last weight tensor, moved by a tenth of its tensor's standard deviation, moved them
by 5e-4 or more (usually 1e-3 to 3e-2).
"""

from __future__ import annotations

import json
import re

import pytest
import torch

from model_reference import (
    REFERENCE,
    assert_same_layout,
    assert_same_outputs,
    assert_same_weights,
    build,
    exact_state,
    fingerprint,
    names,
    outputs,
    reference_input,
    weight_summaries,
)
from seeding import seed_for

RECORDED = json.loads(REFERENCE.read_text())["models"]
# One model per family (dense, Pelee, stage nets with plain and grouped convs) for the tolerance tests.
PROBES = ["cspdensenet_bc40", "csppeleenet", "cspdarknet53", "cspresnext50"]


def test_every_fingerprinted_name_has_a_reference() -> None:
    assert sorted(RECORDED) == sorted(names())


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_model_matches_its_reference(name: str) -> None:
    ours, recorded = fingerprint(name), RECORDED[name]
    assert_same_layout(name, ours, recorded)
    assert_same_weights(name, ours, recorded)
    assert_same_outputs(name, ours, recorded)


def _weights(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    return [(k, p) for k, p in model.named_parameters() if p.dim() > 1]


@pytest.mark.parametrize("where", ["first", "middle", "last"])
@pytest.mark.parametrize("name", PROBES)
def test_one_weight_moved_by_a_tenth_of_its_spread_fails(name: str, where: str) -> None:
    """A real change fails: the weight of the first, middle or last weight tensor that the output
    depends on most (largest gradient; a weight the input never reaches changes nothing) moved by a
    tenth of its tensor's standard deviation."""
    model = exact_state(build(name))
    weights = _weights(model)
    key, weight = weights[{"first": 0, "middle": len(weights) // 2, "last": -1}[where]]
    model(reference_input(name)).square().sum().backward()
    assert weight.grad is not None
    i = int(weight.grad.abs().argmax())
    with torch.no_grad():
        weight.view(-1)[i] += 0.1 * weight.std()
    with pytest.raises(
        AssertionError, match=rf"{re.escape(name)}: the (output of .* changed|logits changed)"
    ):
        assert_same_outputs(name, outputs(name, model), RECORDED[name])


@pytest.mark.parametrize("name", PROBES)
def test_float_noise_of_one_millionth_passes(name: str) -> None:
    """Noise of 1e-6 relative on every float of the state (weights and norm statistics) passes,
    for the forward pass and for the initial weights."""
    generator = torch.Generator().manual_seed(seed := seed_for(f"fingerprint noise {name}"))
    print(f"noise seed {seed}")

    def noisy(model: torch.nn.Module) -> torch.nn.Module:
        with torch.no_grad():
            for t in model.state_dict().values():
                if t.is_floating_point():
                    t.mul_(1 + 1e-6 * torch.randn(t.shape, generator=generator))
        return model

    recorded = RECORDED[name]
    assert_same_weights(name, {"weights": weight_summaries(noisy(build(name)))}, recorded)
    assert_same_outputs(name, outputs(name, noisy(exact_state(build(name)))), recorded)
