"""A validation split held out of one detection source, when the data has none of its own.

>>> import torch
>>> from cspnet.detection.data.readers import DetectionSource, ImageRecord
>>> records = [ImageRecord(f"{i}.jpg", 8, 8, torch.zeros(0, 4), torch.zeros(0), i) for i in range(10)]
>>> train, val = hold_out(DetectionSource(records, ["a"], "data.json"), 0.2)
>>> len(train.records), len(val.records), val.origin
(8, 2, 'data.json (held out)')
"""

from __future__ import annotations

import dataclasses

import torch

from cspnet.detection.data.readers import DetectionSource


def hold_out(source: DetectionSource, fraction: float, seed: int = 0) -> tuple[DetectionSource, DetectionSource]:
    """A seeded split of one source's images into ``(train, val)``, ``fraction`` of them (at least one) held out."""
    order = torch.randperm(len(source.records), generator=torch.Generator().manual_seed(seed)).tolist()
    cut = max(1, round(len(order) * fraction)) if len(order) > 1 else 0
    val = [source.records[i] for i in sorted(order[:cut])]
    train = [source.records[i] for i in sorted(order[cut:])]
    if not train:
        raise ValueError(f"{source.origin}: {len(source.records)} image(s) are too few to hold out a validation split")
    return (dataclasses.replace(source, records=train),
            dataclasses.replace(source, records=val, origin=source.origin + " (held out)"))  # fmt: skip
