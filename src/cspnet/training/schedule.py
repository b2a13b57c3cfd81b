"""Learning-rate schedule: linear warm-up, then cosine decay, stepped per optimizer step."""

from __future__ import annotations

import math


class WarmupCosine:
    """LR multiplier at optimizer step ``s`` (a picklable callable for ``LambdaLR``).

    >>> f = WarmupCosine(warmup_steps=10, total_steps=110, min_ratio=0.0)
    >>> round(f(0), 2), f(10), round(f(60), 2), round(f(110), 2)
    (0.1, 1.0, 0.5, 0.0)
    """

    def __init__(self, warmup_steps: int, total_steps: int, min_ratio: float = 0.01) -> None:
        self.warmup_steps, self.total_steps, self.min_ratio = warmup_steps, max(1, total_steps), min_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
