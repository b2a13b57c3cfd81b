"""What a neck costs in activation memory: the feature pyramid the paper's Maxout compresses.

:func:`cspnet.profile` gives a detector's BFLOPs, parameters and whole-model memory with per-part
rows; this adds the neck's own activation memory, measured the profiler's way (every tensor an op
allocates, on the meta device, one image): the total the neck allocates, the most alive at once,
and the part of it that is concatenations (the "enormous" concatenated maps of spec section 5).
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode


@dataclass(frozen=True)
class PyramidMemory:
    """Bytes the neck allocates for one image (backbone features and parameters excluded)."""

    total_bytes: int
    """Every tensor the neck's ops create: what a training forward keeps."""
    peak_bytes: int
    """The most neck-created bytes alive at once in an inference pass."""
    concat_bytes: int
    """The concatenations alone."""


class _NeckAllocations(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.total = self.live = self.peak = self.concat = 0

    def _release(self, nbytes: int) -> None:
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        if any(r.alias_info is not None for r in func._schema.returns):  # views, in-place: no new memory
            return out
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                nbytes = t.numel() * t.element_size()
                self.total += nbytes
                self.live += nbytes
                self.peak = max(self.peak, self.live)
                if func is torch.ops.aten.cat.default:
                    self.concat += nbytes
                weakref.finalize(t, self._release, nbytes)
        return out


@torch.no_grad()
def feature_pyramid_memory(name: str, input_size: Sequence[int] | int, **overrides: Any) -> PyramidMemory:
    """The neck's activation memory of the registered detector ``name`` at ``input_size``.

    >>> m = feature_pyramid_memory("cspdensenet_bc40_efm", 128)
    >>> m.concat_bytes < m.total_bytes and m.peak_bytes <= m.total_bytes
    True
    """
    from cspnet.detection.model import Detector
    from cspnet.models import create_model

    size = (3, input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    with torch.device("meta"):
        model = create_model(name, **overrides).eval()
        if not isinstance(model, Detector):
            raise ValueError(f"{name!r} is not a detector: feature-pyramid memory needs a neck")
        features = model.backbone(torch.empty(1, *size))
        tracker = _NeckAllocations()
        with tracker:
            outputs = model.neck(features)
        del outputs
    return PyramidMemory(tracker.total, tracker.peak, tracker.concat)
