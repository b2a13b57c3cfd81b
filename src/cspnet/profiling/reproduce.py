"""The measurements behind ``docs/reproduction.md``: our costs against the published ones, the CSP
ablation over partial ratio and fusion strategy, and the per-layer profiles of baseline/CSP pairs.

Everything here measures (with :func:`cspnet.profiling.profile` and :func:`measure_latency`) and
returns data; :mod:`cspnet.reports.reproduction` writes the report and draws its plots from it.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cspnet.layers import FUSIONS
from cspnet.models import create_model, get_model_entry, list_models
from cspnet.profiling.latency import measure_latency
from cspnet.profiling.profiler import ModelProfile, profile

PARTIAL_RATIOS = (0.25, 0.5, 0.75)

# Latency is timed on one intra-op thread: on a small shared machine, several spin-waiting threads
# make timings vary tenfold between runs (measured: DenseNet-201 0.28 s on 1 thread, 1.6-17 s on 2).
LATENCY_THREADS = 1

# Published cost keys of ModelEntry.published -> (our value from a profile, in the published unit; label).
PUBLISHED_METRICS: dict[str, tuple[Callable[[ModelProfile], float], str]] = {
    "params": (lambda p: p.params / 1e6, "params (M)"),
    "conv_weight_params": (lambda p: p.conv_weight_params / 1e6, "conv weights (M)"),
    "gmacs": (lambda p: p.macs / 1e9, "GMACs"),
    "bflops": (lambda p: p.darknet_bflops, "darknet BFLOPs"),
    "cio_m": (lambda p: p.cio / 1e6, "CIO (M)"),
}
_IN_MILLIONS = {"params", "conv_weight_params"}  # published as counts, shown in millions

# Memory-traffic figures the CSPNet paper states in its text (Fig. 8: 34.4M vs 32.6M), not in the registry.
PAPER_CIO_M = {"resnext50_paper": 34.41, "cspresnext50_paper": 32.64}

# The CSP ablation: (family label, baseline model, CSP model to vary).
ABLATIONS = (("CSPDenseNet-201", "densenet201", "cspdensenet201"), ("CSPPeleeNet", "peleenet", "csppeleenet"))

# Pairs whose per-layer / per-stage costs are plotted (the paper's Figure 7 idea).
LAYER_PAIRS = (("densenet201", "cspdensenet201"), ("peleenet", "csppeleenet"))

BASELINE = "baseline"
"""The ``fusion`` label of an ablation's baseline row (the network without CSP stages)."""


@dataclass
class PublishedFigure:
    """One published cost figure and ours, in the published unit."""

    model: str
    source: str
    input_side: int
    label: str
    published: float
    ours: float


@dataclass
class AblationRow:
    family: str
    model: str
    partial_ratio: float
    fusion: str
    profile: ModelProfile | None
    latency_ms: float | None
    error: str = ""

    @property
    def is_baseline(self) -> bool:
        return self.fusion == BASELINE


def measure_published() -> list[PublishedFigure]:
    """Every registered model's published cost figures, with ours at the input side they are for."""
    rows: list[PublishedFigure] = []
    for name in list_models():
        entry = get_model_entry(name)
        for figures in entry.published:
            keys = [k for k in PUBLISHED_METRICS if figures.get(k) is not None]
            if not keys:
                continue
            side = int(figures.get("input", entry.input_size[1]))
            p = profile(name, side)
            for key in keys:
                ours_fn, label = PUBLISHED_METRICS[key]
                ref = float(figures[key]) / (1e6 if key in _IN_MILLIONS else 1)
                rows.append(PublishedFigure(name, figures.get("source", "?"), side, label, ref, ours_fn(p)))
    return rows


def measure_paper_cio() -> list[tuple[str, float, float]]:
    """``(model, the paper's CIO in M, ours in M)`` at 256x256 for the figures the paper's text states."""
    registered = set(list_models())
    return [(name, ref, profile(name, 256).cio / 1e6) for name, ref in PAPER_CIO_M.items() if name in registered]


def run_ablation(quick: bool, log: Callable[[str], None]) -> list[AblationRow]:
    """Baseline and CSP model over partial ratio x fusion, with costs and (unless quick) latency."""
    rows: list[AblationRow] = []
    registered = set(list_models())
    for family, base, csp in ABLATIONS:
        if base not in registered or csp not in registered:
            rows.append(AblationRow(family, csp, 0.0, "", None, None, f"{base} / {csp} not registered"))
            continue
        variants: list[tuple[str, float, str, dict[str, Any]]] = [(base, 0.0, BASELINE, {})]
        variants += [(csp, r, f, {"partial_ratio": r, "fusion": f}) for r in PARTIAL_RATIOS for f in FUSIONS]
        for model_name, ratio, fusion, overrides in variants:
            log(f"ablation: {model_name} {overrides or ''}")
            try:
                side = get_model_entry(model_name).input_size
                p = profile(model_name, side, **overrides)
                latency = None
                if not quick:
                    model = create_model(model_name, **overrides)
                    latency = measure_latency(model, side, warmup=2, iters=5, threads=LATENCY_THREADS)
                rows.append(AblationRow(family, model_name, ratio, fusion, p, latency))
            except ValueError as exc:  # a combination the config rejects (e.g. a bypass as wide as the stage)
                rows.append(AblationRow(family, model_name, ratio, fusion, None, None, str(exc)))
    return rows


def profile_layer_pairs() -> tuple[list[tuple[ModelProfile, ModelProfile]], list[str]]:
    """The profiles of each registered (baseline, CSP) pair of ``LAYER_PAIRS``, and the pairs missing."""
    registered = set(list_models())
    pairs = [(profile(a), profile(b)) for a, b in LAYER_PAIRS if a in registered and b in registered]
    missing = [f"{a} / {b}" for a, b in LAYER_PAIRS if a not in registered or b not in registered]
    return pairs, missing


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:  # the model name is more telling than the architecture, where Linux exposes it
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} logical CPUs, torch {torch.__version__} with {torch.get_num_threads()} threads, "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}"
    )
