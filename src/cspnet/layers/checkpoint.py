"""Activation checkpointing that leaves batch-norm statistics as if the forward ran once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint


def checkpoint_once(fn: Callable[..., Tensor], owner: nn.Module, *args: Any) -> Tensor:
    """``torch.utils.checkpoint(fn, *args)`` without the second running-statistics update.

    Recomputing a checkpointed segment in the backward pass runs its batch norms in training mode
    a second time, which would move their running mean/var (and ``num_batches_tracked``) twice per
    step and make a checkpointed model drift from an ordinary one. During the recomputation the
    batch norms of ``owner`` (the module ``fn`` runs) get momentum 0, so they reuse the batch
    statistics without touching the running ones. Outputs and gradients are unchanged.
    """
    norms = [m for m in owner.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    calls = 0

    def run(*inputs: Any) -> Tensor:
        nonlocal calls
        calls += 1
        if calls == 1 or not norms:
            return fn(*inputs)
        saved = []
        for m in norms:
            counter = m.num_batches_tracked
            assert counter is not None  # it exists wherever running statistics are tracked
            saved.append((m, m.momentum, counter, counter.clone()))
            m.momentum = 0.0
        try:
            return fn(*inputs)
        finally:
            for m, momentum, counter, count in saved:
                m.momentum = momentum
                counter.copy_(count)

    return checkpoint(run, *args, use_reentrant=False)
