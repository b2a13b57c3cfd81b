"""What a neck costs in activation memory: the feature pyramid the paper's Maxout compresses.

:func:`cspnet.profile` gives a detector's BFLOPs, parameters and whole-model memory with per-part
rows; this adds the neck's own activation memory, measured the profiler's way (every tensor an op
allocates, on the meta device, one image): the total the neck allocates, the most alive at once,
and the part of it that is concatenations (the "enormous" concatenated maps of spec section 5).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from cspnet.profiling.profiler import AllocationTracker


@dataclass(frozen=True)
class PyramidMemory:
    """Bytes the neck allocates for one image (backbone features and parameters excluded)."""

    total_bytes: int
    """Every tensor the neck's ops create: what a training forward keeps."""
    peak_bytes: int
    """The most neck-created bytes alive at once in an inference pass."""
    concat_bytes: int
    """The concatenations alone."""


class _NeckAllocations(AllocationTracker):
    """The profiler's allocation tracker, with the concatenations also counted apart."""

    def __init__(self) -> None:
        super().__init__()
        self.concat = 0

    def on_new_tensor(self, func: Any, nbytes: int) -> None:
        if func is torch.ops.aten.cat.default:
            self.concat += nbytes


@torch.no_grad()
def feature_pyramid_memory(name: str, input_size: Sequence[int] | int, **overrides: Any) -> PyramidMemory:
    """The neck's activation memory of the registered detector ``name`` at ``input_size``.

    >>> m = feature_pyramid_memory("cspdensenet_bc40_efm", 128)
    >>> m.concat_bytes < m.total_bytes and m.peak_bytes <= m.total_bytes
    True
    """
    from cspnet.models import create_model
    from cspnet.models.detectors.model import Detector

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


NECK_VARIANTS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("FPN (YOLOv3)", {"neck": "fpn"}),
    ("GFM (Fig. 6b)", {"neck": "gfm"}),
    ("PANet", {"neck": "panet"}),
    ("EFM, Maxout 4", {"neck": "efm"}),
    ("EFM without Maxout", {"neck": "efm", "maxout": 0}),
    ("EFM (SAM)", {"neck": "efm", "sam": True}),
    ("EFM (SPP)", {"neck": "efm", "spp": True}),
)
"""The neck comparison: Table 2's necks and options on one backbone."""


@dataclass(frozen=True)
class NeckCost:
    """One neck variant of a detector: its costs and (when measured) its CPU latency."""

    label: str
    overrides: dict[str, Any]
    bflops: float
    neck_bflops: float
    params: int
    memory: PyramidMemory
    latency_ms: float | None = None


def compare_necks(
    name: str = "csppeleenet_efm",
    side: int = 416,
    *,
    latency: bool = False,
    threads: int = 1,
    variants: tuple[tuple[str, dict[str, Any]], ...] = NECK_VARIANTS,
) -> list[NeckCost]:
    """``variants`` (label, config overrides) of the registered detector ``name`` at ``side`` x ``side``.

    Costs come from the meta device (exact); ``latency=True`` adds the median single-image CPU
    latency of 5 runs with ``threads`` threads (machine- and load-dependent).
    """
    from cspnet.models import create_model
    from cspnet.profiling import profile
    from cspnet.profiling.latency import measure_latency

    rows = []
    for label, overrides in variants:
        p = profile(name, side, **overrides)
        neck = next(g for g in p.groups if g.name == "neck")
        ms = None
        if latency:
            torch.manual_seed(0)
            model = create_model(name, **overrides)
            ms = measure_latency(model, (3, side, side), warmup=1, iters=5, threads=threads)
        memory = feature_pyramid_memory(name, side, **overrides)
        rows.append(NeckCost(label, overrides, p.darknet_bflops, neck.darknet_bflops, p.params, memory, ms))
    return rows


def neck_comparison_table(rows: list[NeckCost]) -> list[str]:
    """A markdown table of :func:`compare_necks` rows (latency column only when measured)."""
    mib = 2**20
    timed = any(r.latency_ms is not None for r in rows)
    header = ["neck", "BFLOPs", "neck BFLOPs", "params", "neck memory, all (MiB)", "neck peak (MiB)",
              "concatenations (MiB)"] + (["CPU ms"] if timed else [])  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    for r in rows:
        cells = [r.label, f"{r.bflops:.3f}", f"{r.neck_bflops:.3f}", f"{r.params / 1e6:.2f}M",
                 f"{r.memory.total_bytes / mib:.2f}", f"{r.memory.peak_bytes / mib:.2f}",
                 f"{r.memory.concat_bytes / mib:.2f}"]  # fmt: skip
        if timed:
            cells.append("-" if r.latency_ms is None else f"{r.latency_ms:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines
