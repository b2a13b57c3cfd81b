"""Parameters for tests that run over every registered model: each model reduced by default, at its
registered size under ``slow``.

A reduced model keeps its registered config but cuts every stage to at most two blocks: the same
stem, split, block, transition, fusion and head code at a fraction of the cost. The registered sizes
keep the plain model name as their test id, so ids of the full-size tests do not change.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import cspnet

DEPTH_FIELDS = ("block_config", "depths")  # the config fields that count blocks per stage, by family


def reduced(name: str) -> dict[str, tuple[int, ...]]:
    """Overrides that cut every stage of ``name`` to at most two blocks and keep the rest of its config.

    >>> reduced("cspdensenet121")
    {'block_config': (2, 2, 2, 2)}
    """
    config = cspnet.get_model_entry(name).config
    fields = [f for f in DEPTH_FIELDS if f in config.field_names()]
    assert fields, (
        f"{name}: none of {DEPTH_FIELDS} in its config; add the family's depth field to DEPTH_FIELDS"
    )
    return {f: tuple(min(d, 2) for d in getattr(config, f)) for f in fields}


def model_cases(names: list[str]) -> list:
    """``(name, overrides)`` parameters: ``name-reduced`` with ``reduced(name)``, and ``name`` with no
    overrides, marked slow."""
    return [pytest.param(n, reduced(n), id=f"{n}-reduced") for n in names] + [
        pytest.param(n, {}, id=n, marks=pytest.mark.slow) for n in names
    ]


def assert_same_training_step(reference: nn.Module, other: nn.Module, x: torch.Tensor) -> None:
    """One forward and backward of each model (the same weights, another way of computing: gradient
    checkpointing, memory-efficient recomputation) gives the same outputs, gradients and BatchNorm
    statistics: a recomputation in backward must not update them a second time."""
    outputs = []
    for model in (reference, other):
        out = model(x)
        out.square().sum().backward()
        outputs.append(out)
    torch.testing.assert_close(outputs[1], outputs[0])
    grads = dict(reference.named_parameters())
    for n, p in other.named_parameters():
        torch.testing.assert_close(p.grad, grads[n].grad, msg=n)
    buffers = dict(reference.named_buffers())
    for n, b in other.named_buffers():
        torch.testing.assert_close(b, buffers[n], msg=n)
