"""Wall-clock latency of a forward pass on the CPU (what the reproduction report tabulates)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence

import torch
from torch import nn


@torch.inference_mode()
def measure_latency(
    model: nn.Module,
    input_size: Sequence[int],
    *,
    batch_size: int = 1,
    warmup: int = 2,
    iters: int = 5,
    threads: int | None = None,
) -> float:
    """Median milliseconds of ``model(x)`` over ``iters`` timed runs after ``warmup`` untimed ones.

    The model runs in eval mode on its own device; the median resists the odd slow run of a shared CPU.
    ``threads`` sets PyTorch's intra-op threads for the measurement (restored afterwards): on a loaded
    machine one thread gives stable timings where several spin-waiting threads do not.

    >>> from torch import nn
    >>> measure_latency(nn.Conv2d(3, 8, 3), (3, 32, 32), iters=2) > 0
    True
    """
    if iters < 1 or warmup < 0:
        raise ValueError(f"iters={iters}, warmup={warmup} are invalid: expected iters >= 1, warmup >= 0")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    x = torch.randn(batch_size, *input_size, device=device)
    was_training, previous_threads = model.training, torch.get_num_threads()
    model.eval()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        for _ in range(warmup):
            model(x)
        times = []
        for _ in range(iters):
            start = time.perf_counter()
            model(x)
            times.append((time.perf_counter() - start) * 1e3)
    finally:
        model.train(was_training)
        torch.set_num_threads(previous_threads)
    return statistics.median(times)
