"""A seeded, rank-aware sampler that can resume in the middle of an epoch.

The order of epoch ``e`` is a permutation drawn from ``seed + e`` alone, so it is the same on every
run, after every restart, and for every process count's union. Each of ``num_replicas`` ranks takes
every ``num_replicas``-th index (the list padded to a multiple, like ``DistributedSampler``).
``skip(epoch, samples)`` drops the first ``samples`` indices of that epoch: what a run
interrupted mid-epoch had already trained on.

``len()`` stays the length of a whole epoch even while skipping: Lightning sizes the epoch (and
every later one) from the loader's length once, and counts the batches a resumed epoch had already
done itself. A shorter length would cut the resumed epoch and every epoch after it.

>>> s = ResumableSampler(10, seed=0)
>>> s.set_epoch(3); full = list(s)
>>> s.skip(epoch=3, samples=4); list(s) == full[4:], len(s)
(True, 10)
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class ResumableSampler(Sampler[int]):
    def __init__(
        self, length: int, seed: int = 0, shuffle: bool = True, num_replicas: int = 1, rank: int = 0
    ) -> None:
        self.length, self.seed, self.shuffle = length, seed, shuffle
        self.num_replicas, self.rank = num_replicas, rank
        self.epoch = 0
        self.per_rank = math.ceil(length / num_replicas)
        self._skip: tuple[int, int] | None = None  # (epoch, samples already consumed on this rank)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def skip(self, epoch: int, samples: int) -> None:
        """Start ``epoch`` after its first ``samples`` indices on this rank."""
        self._skip = (epoch, samples)

    def _indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.length, generator=g).tolist()
        else:
            order = list(range(self.length))
        total = self.per_rank * self.num_replicas
        order += order[: total - len(order)]  # pad so every rank gets the same number
        return order[self.rank : total : self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        indices = self._indices()
        if self._skip is not None and self._skip[0] == self.epoch:
            indices = indices[self._skip[1] :]
        return iter(indices)

    def __len__(self) -> int:
        return self.per_rank  # a whole epoch, skipping or not (see the module docstring)
