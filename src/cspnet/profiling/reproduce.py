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
from typing import Any

import torch
from torch import nn

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
}  # and ELASTIC_BFLOPS, measured apart (elastic_counter_bflops)
_IN_MILLIONS = {"params", "conv_weight_params"}  # published as counts, shown in millions

ELASTIC_BFLOPS = "elastic_bflops"
"""Published key of a figure in ELASTIC's own convention (:func:`elastic_counter_bflops`), which a
:class:`ModelProfile` does not hold: measured apart."""
ELASTIC_BFLOPS_LABEL = "BFLOPs (ELASTIC's counter)"

# Memory-traffic figures the CSPNet paper states in its text (Fig. 8: 34.4M vs 32.6M), not in the registry.
PAPER_CIO_M = {"resnext50_paper": 34.41, "cspresnext50_paper": 32.64}

# The CSP ablation: (family label, baseline model, CSP model to vary).
ABLATIONS = (
    ("CSPDenseNet-201", "densenet201", "cspdensenet201"),
    ("CSPDenseNet-201-Elastic", "densenet201_elastic", "cspdensenet201_elastic"),
    ("CSPPeleeNet", "peleenet", "csppeleenet"),
)

# The Elastic models beside their plain twins: (plain model, Elastic model).
ELASTIC_PAIRS = (
    ("cspdarknet53_paper", "cspdarknet53_elastic_paper"),
    ("cspresnet50_paper", "cspresnet50_elastic_paper"),
    ("cspresnext50_paper", "cspresnext50_elastic_paper"),
    ("densenet201_elastic", "cspdensenet201_elastic"),
)

# CSPDenseNet-201-Elastic's open choices, one at a time from the registered model, then the closest
# combination to the paper's 20.17M / 7.13 found by a search over them (docs/cspdensenet.md).
ELASTIC_DENSE_MODEL = "cspdensenet201_elastic"
ELASTIC_DENSE_CHOICES: tuple[dict[str, Any], ...] = (
    {},
    {"partial_ratio": 0.25},
    {"partial_ratio": 0.75},
    {"fusion": "fusion_first"},
    {"fusion": "fusion_last"},
    {"transition_b_ratio": 0.5},
    {"transition_pool": "before"},
    {"last_stage_transition": True},
    {"elastic": True},
    {"fusion": "fusion_first", "transition_pool": "before", "last_stage_transition": True},
    {"partial_ratio": 0.75, "transition_pool": "before", "last_stage_transition": True, "elastic": True},
)

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


# What ELASTIC's counter (allenai/elastic utils.py, add_flops_counting_methods) adds to the multiply-adds:
# the input elements of every batch norm (twice where affine), ReLU-family activation and 2-D pool module.
_ELASTIC_COUNTED = (nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.MaxPool2d, nn.AvgPool2d)


def elastic_counter_bflops(name: str, side: int, *, conv_macs: int | None = None, **overrides: Any) -> float:
    """2 x what ELASTIC's FLOP counter reports for ``name`` at ``side`` x ``side``, in billions.

    That counter sums conv and linear multiply-adds (:attr:`ModelProfile.conv_macs`; pass them as
    ``conv_macs`` when a profile is at hand) and the input elements of every batch norm (x2 with its
    affine step), ReLU-family activation and pool module; upsampling, concatenations and functional
    calls are free. The CSPNet paper's Elastic DenseNet figures (8.77, 7.13 BFLOPs) are twice its
    output. (This library's final norm carries its ReLU as a module where allenai calls ``F.relu``:
    94K elements more for DenseNet-201-Elastic, 0.002 %.)

    >>> round(elastic_counter_bflops("densenet201_elastic", 224), 2)
    8.77
    """
    elements = 0

    def count(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        nonlocal elements
        n = inputs[0].numel()
        elements += 2 * n if isinstance(module, nn.BatchNorm2d) and module.affine else n

    with torch.device("meta"):
        model = create_model(name, **overrides).eval()
    handles = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, _ELASTIC_COUNTED)]
    try:
        with torch.no_grad():
            model(torch.empty(1, 3, side, side, device="meta"))
    finally:
        for h in handles:
            h.remove()
    if conv_macs is None:
        conv_macs = profile(name, side, **overrides).conv_macs
    return 2 * (conv_macs + elements) / 1e9


def measure_published() -> list[PublishedFigure]:
    """Every registered model's published cost figures, with ours at the input side they are for."""
    rows: list[PublishedFigure] = []
    for name in list_models():
        entry = get_model_entry(name)
        for figures in entry.published:
            keys = [k for k in PUBLISHED_METRICS if figures.get(k) is not None]
            elastic = figures.get(ELASTIC_BFLOPS)
            if not keys and elastic is None:
                continue
            side = int(figures.get("input", entry.input_size[1]))
            source = figures.get("source", "?")
            p = profile(name, side)
            for key in keys:
                ours_fn, label = PUBLISHED_METRICS[key]
                ref = float(figures[key]) / (1e6 if key in _IN_MILLIONS else 1)
                rows.append(PublishedFigure(name, source, side, label, ref, ours_fn(p)))
            if elastic is not None:
                ours = elastic_counter_bflops(name, side, conv_macs=p.conv_macs)
                rows.append(PublishedFigure(name, source, side, ELASTIC_BFLOPS_LABEL, float(elastic), ours))
    return rows


@dataclass
class ElasticRow:
    """One Elastic model (or CSPDenseNet-201-Elastic variant) with both BFLOPs conventions."""

    model: str
    overrides: dict[str, Any]
    profile: ModelProfile
    elastic_bflops: float


def measure_elastic() -> tuple[list[tuple[ElasticRow, ElasticRow]], list[ElasticRow]]:
    """The Elastic models beside their plain twins, and CSPDenseNet-201-Elastic's open choices."""
    registered = set(list_models())

    def row(name: str, **overrides: Any) -> ElasticRow:
        side = get_model_entry(name).input_size[1]
        p = profile(name, side, **overrides)
        return ElasticRow(name, overrides, p, elastic_counter_bflops(name, side, conv_macs=p.conv_macs, **overrides))

    pairs = [(row(a), row(b)) for a, b in ELASTIC_PAIRS if a in registered and b in registered]
    choices = [row(ELASTIC_DENSE_MODEL, **o) for o in ELASTIC_DENSE_CHOICES] if ELASTIC_DENSE_MODEL in registered else []
    return pairs, choices


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
    from cspnet.cpu import cpu_model

    return (
        f"{cpu_model()}, {os.cpu_count()} logical CPUs, torch {torch.__version__} with {torch.get_num_threads()} threads, "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}"
    )
