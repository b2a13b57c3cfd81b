"""Write ``docs/reproduction.md`` and its plots from the measurements of :mod:`cspnet.profiling.reproduce`.

Used by ``cspnet reproduce``; every number in the report comes from :func:`cspnet.profiling.profile`
(or :func:`~cspnet.profiling.measure_latency`) at the moment the report is written. The plots are
drawn on :class:`matplotlib.figure.Figure` objects: the process's matplotlib backend is left alone.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cspnet.layers import FUSIONS
from cspnet.profiling.profiler import ModelProfile
from cspnet.profiling.reproduce import (
    ABLATIONS,
    ELASTIC_DENSE_MODEL,
    LATENCY_THREADS,
    AblationRow,
    ElasticRow,
    PublishedFigure,
    machine_description,
    measure_elastic,
    measure_paper_cio,
    measure_published,
    profile_layer_pairs,
    run_ablation,
)
from cspnet.reports.tables import markdown_table


def _pct(ours: float, ref: float) -> str:
    return f"{100 * (ours - ref) / ref:+.2f}%" if ref else "-"


def published_section(figures: list[PublishedFigure], cio: list[tuple[str, float, float]]) -> list[str]:
    """Every registered model with published figures, ours beside them."""
    rows = [
        [f.model, f.source, str(f.input_side), f.label, f"{f.published:.3f}", f"{f.ours:.3f}", _pct(f.ours, f.published)]
        for f in figures
    ]
    cio_rows = [[name, f"{ref:.2f}", f"{ours:.3f}", _pct(ours, ref)] for name, ref, ours in cio]
    return [
        "## 1. Published figures against ours",
        "",
        "Every registered model whose `ModelEntry.published` carries cost figures, profiled at the input "
        "side the figures are for. Published values are rounded as published (the README prints conv "
        "weights to 0.01M), so differences within that rounding are agreement.",
        "",
        *markdown_table(["model", "source", "input", "metric", "published", "ours", "difference"], rows),
        "",
        'Memory traffic stated in the paper\'s text (Fig. 8: "34.4M vs 32.6M"; spec 3.1 gives 34.41M / 32.64M), '
        "CIO at 256x256:",
        "",
        *markdown_table(["model", "paper CIO (M)", "ours (M)", "difference"], cio_rows),
    ]


def ablation_section(rows: list[AblationRow], plot: str | None) -> list[str]:
    lines = [
        "## 2. Ablation: partial ratio and fusion strategy",
        "",
        "gamma (`partial_ratio`) is the fraction of each stage's input that bypasses the blocks; "
        "fusion is the partial transition of the paper's Figure 3 (`csp`: T, concat, U; `fusion_first`: "
        "concat, U; `fusion_last`: T, concat). Differences are against the family's baseline (no CSP). "
        f"Latency: median of 5 timed batch-1 forward passes after 2 warm-up passes, CPU, eval mode, "
        f"{LATENCY_THREADS} intra-op thread(s).",
        "",
    ]
    table: list[list[str]] = []
    base: ModelProfile | None = None
    base_latency: float | None = None
    for r in rows:
        if r.profile is None:
            table.append([r.family, r.model, f"{r.partial_ratio:g}", r.fusion, "-", "-", "-", "-", "-", r.error])
            continue
        p = r.profile
        if r.is_baseline:
            base, base_latency = p, r.latency_ms
        ref = base or p
        lat = "-" if r.latency_ms is None else f"{r.latency_ms:.1f}"
        if r.latency_ms is not None and base_latency and not r.is_baseline:
            lat += f" ({_pct(r.latency_ms, base_latency)})"
        table.append(
            [
                r.family,
                r.model,
                f"{r.partial_ratio:g}",
                r.fusion,
                f"{p.params / 1e6:.3f}",
                f"{p.macs / 1e9:.3f} ({_pct(p.macs, ref.macs)})",
                f"{p.darknet_bflops:.3f}",
                f"{p.cio / 1e6:.2f} ({_pct(p.cio, ref.cio)})",
                lat,
                "",
            ]
        )
    header = ["family", "model", "gamma", "fusion", "params (M)", "GMACs", "BFLOPs", "CIO (M)", "latency (ms)", "note"]
    lines += markdown_table(header, table)
    lines += [
        "",
        "The paper's PeleeNet points (spec 1.4, BFLOPs at 224): PeleeNet 1.017; CSPPeleeNet (gamma 0.5) 0.888 "
        "(-13 %); fusion last about 0.80 (-21 %); fusion first about 0.755 (-26 %); gamma 0.25: -11 % (fusion "
        "last), -3 % (CSP).",
    ]
    if plot:
        lines += ["", f"![cost against partial ratio]({plot})"]
    return lines


def _save(fig: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)  # a Figure without pyplot picks the PNG canvas itself


def plot_ablation(rows: list[AblationRow], path: Path) -> bool:
    """Cost (and latency, where measured) against gamma per fusion; ``False`` if nothing to plot."""
    from matplotlib.figure import Figure

    families = [f for f, *_ in ABLATIONS if any(r.family == f and r.profile for r in rows)]
    if not families:
        return False
    metrics: list[tuple[str, Callable[[ModelProfile, AblationRow], float | None]]] = [
        ("GMACs", lambda p, r: p.macs / 1e9),
        ("params (M)", lambda p, r: p.params / 1e6),
        ("CIO (M)", lambda p, r: p.cio / 1e6),
        ("latency (ms)", lambda p, r: r.latency_ms),
    ]
    # Without timings (--quick) the latency panel would be empty.
    metrics = [m for m in metrics if any(m[1](r.profile, r) is not None for r in rows if r.profile)]
    fig = Figure(figsize=(4 * len(metrics), 3.2 * len(families)))
    axes = fig.subplots(len(families), len(metrics), squeeze=False)
    for row_axes, family in zip(axes, families):
        fam = [(r.profile, r) for r in rows if r.family == family and r.profile]
        base = next(((p, r) for p, r in fam if r.is_baseline), None)
        for ax, (label, value) in zip(row_axes, metrics):
            for fusion in FUSIONS:
                pts = [(r.partial_ratio, value(p, r)) for p, r in fam if r.fusion == fusion]
                pts = [(x, y) for x, y in pts if y is not None]
                if base is not None and value(*base) is not None:
                    pts = [(0.0, value(*base)), *pts]
                if pts:
                    ax.plot(*zip(*pts), marker="o", label=fusion)
            ax.set_title(f"{family}: {label}", fontsize=9)
            ax.set_xlabel("partial ratio gamma (0 = baseline)")
            ax.grid(alpha=0.3)
        row_axes[0].legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    return True


def plot_layers(pairs: list[tuple[ModelProfile, ModelProfile]], path: Path) -> None:
    """MACs per conv layer in network order, and per stage, for each (baseline, CSP) pair."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(14, 3.6 * len(pairs)))
    axes = fig.subplots(len(pairs), 2, squeeze=False, gridspec_kw={"width_ratios": [3, 1]})
    for (ax_layers, ax_stages), pair in zip(axes, pairs):
        for p in pair:
            macs = [lc.macs / 1e6 for lc in p.layers if lc.kind in ("conv", "fc")]
            ax_layers.plot(range(len(macs)), macs, lw=0.9, label=f"{p.name} ({len(macs)} layers)")
        ax_layers.set_title(
            f"MACs per conv / fc layer at {pair[0].input_size[1]}x{pair[0].input_size[2]}", fontsize=9
        )
        ax_layers.set_xlabel("layer, in network order")
        ax_layers.set_ylabel("MMACs")
        ax_layers.legend(fontsize=8)
        ax_layers.grid(alpha=0.3)
        names = [g.name for g in pair[0].groups]
        width = 0.4
        for k, p in enumerate(pair):
            by_name = {g.name: g.macs / 1e9 for g in p.groups}
            ax_stages.bar([i + (k - 0.5) * width for i in range(len(names))], [by_name.get(n, 0) for n in names],
                          width, label=p.name)  # fmt: skip
        ax_stages.set_xticks(range(len(names)), names, rotation=45, fontsize=8)
        ax_stages.set_ylabel("GMACs")
        ax_stages.set_title("MACs per stage", fontsize=9)
        ax_stages.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def layers_section(
    plot: str | None, pairs: list[tuple[ModelProfile, ModelProfile]], missing: list[str]
) -> list[str]:
    lines = [
        "## 3. Where the computation goes: a DenseNet against its CSP twin",
        "",
        "The paper's Figure 7 idea: cost per layer in network order. Per stage (GMACs, CIO in M):",
        "",
    ]
    for pair in pairs:
        names = [g.name for g in pair[0].groups]
        rows = []
        for n in names:
            a, b = (next(g for g in p.groups if g.name == n) for p in pair)
            rows.append([n, f"{a.macs / 1e9:.3f}", f"{b.macs / 1e9:.3f} ({_pct(b.macs, a.macs)})",
                         f"{a.cio / 1e6:.2f}", f"{b.cio / 1e6:.2f}"])  # fmt: skip
        # The largest single layer is the "computational bottleneck" the paper talks about.
        peak = [max(lc.macs for lc in p.layers) / 1e6 for p in pair]
        lines += [
            f"**{pair[0].name} vs {pair[1].name}** at {pair[0].input_size[1]}:",
            "",
            *markdown_table(["part", f"{pair[0].name} GMACs", f"{pair[1].name} GMACs", "CIO", "CIO (CSP)"], rows),
            "",
            f"Largest single layer: {peak[0]:.1f} MMACs vs {peak[1]:.1f} MMACs ({_pct(peak[1], peak[0])}).",
            "",
        ]
    if missing:
        lines += [f"Not plotted (not registered yet): {', '.join(missing)}.", ""]
    if plot:
        lines += [f"![MACs per layer and per stage]({plot})"]
    return lines


def detection_section(quick: bool) -> list[str]:
    """EFM / GFM / FPN (Table 2's necks) on CSPPeleeNet at 416: costs, pyramid memory, latency."""
    from cspnet.profiling.necks import compare_necks, neck_comparison_table

    rows = compare_necks("csppeleenet_efm", 416, latency=not quick)
    return [
        "## 4. Detection necks on one backbone (Table 2)",
        "",
        "`csppeleenet_efm` with each neck at 416x416 (one image, 80 classes). Neck memory: every tensor "
        "the neck allocates, the most alive at once in inference, and the concatenations alone (see "
        "[detection-models.md](detection-models.md) for what Maxout saves and why). Table 2's BFLOPs: "
        "PRN-3l 4.586, GFM 4.605, EFM 4.868, EFM (SAM) 5.068, EFM (SPP) 4.863 (unpublished layouts).",
        "",
        *neck_comparison_table(rows),
    ]


# The paper's figures for the DenseNet-201-Elastic pair (spec 3.2): params (M), BFLOPs in ELASTIC's count.
PAPER_ELASTIC_DENSE = {"densenet201_elastic": (19.48, 8.77), "cspdensenet201_elastic": (20.17, 7.13)}


def _overrides_text(overrides: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in overrides.items()) or "none (the registered model)"


def elastic_section(pairs: list[tuple[ElasticRow, ElasticRow]], choices: list[ElasticRow]) -> list[str]:
    """The Elastic models beside their plain twins, and CSPDenseNet-201-Elastic's open choices."""
    lines = [
        "## 5. The Elastic models",
        "",
        "ELASTIC blocks run half of each block at half resolution (2x2 pool, the block's convs, 2x upsample). "
        "The three `*_elastic_paper` models are the official `*-elastic.cfg` (section 1: darknet BFLOPs and "
        "conv weights as the cfgs); `densenet201_elastic` follows allenai/elastic's PyTorch layout and "
        "`cspdensenet201_elastic` puts this library's CSP stage around it (the paper's layout is unpublished). "
        "The paper's two Elastic DenseNet figures are in ELASTIC's own count: its FLOP counter adds the "
        "elements of every batch norm (twice), ReLU and pool to the multiply-adds, and the CSPNet table "
        "doubles that. Both conventions at the model's input size; differences against the row's twin:",
        "",
    ]
    rows = []
    for plain, elastic in pairs:
        for r, twin in ((plain, None), (elastic, plain)):
            p = r.profile
            diff = "" if twin is None else f"{_pct(p.darknet_bflops, twin.profile.darknet_bflops)} vs {twin.model}"
            paper = PAPER_ELASTIC_DENSE.get(r.model)
            rows.append([r.model, str(p.input_size[1]), f"{p.params / 1e6:.3f}", f"{p.conv_weight_params / 1e6:.3f}",
                         f"{p.darknet_bflops:.3f}", f"{r.elastic_bflops:.3f}", diff,
                         "" if paper is None else f"{paper[0]:.2f}M / {paper[1]:.2f}"])  # fmt: skip
    header = ["model", "input", "params (M)", "conv weights (M)", "darknet BFLOPs", "BFLOPs (ELASTIC)",
              "darknet BFLOPs vs twin", "paper (params / ELASTIC BFLOPs)"]  # fmt: skip
    lines += markdown_table(header, rows)
    if choices:
        ref_params, ref_bflops = PAPER_ELASTIC_DENSE[ELASTIC_DENSE_MODEL]
        lines += [
            "",
            f"`{ELASTIC_DENSE_MODEL}`'s open choices (config fields, see [cspdensenet.md](cspdensenet.md)), "
            f"one at a time from the registered model, then the two combinations closest to the paper's "
            f"{ref_params}M / {ref_bflops} found by a search over them:",
            "",
        ]
        choice_rows = [
            [_overrides_text(r.overrides), f"{r.profile.params / 1e6:.3f}", _pct(r.profile.params / 1e6, ref_params),
             f"{r.elastic_bflops:.3f}", _pct(r.elastic_bflops, ref_bflops), f"{r.profile.darknet_bflops:.3f}"]
            for r in choices
        ]  # fmt: skip
        lines += markdown_table(
            ["overrides", "params (M)", "vs paper", "BFLOPs (ELASTIC)", "vs paper", "darknet BFLOPs"], choice_rows
        )
    return lines


def write_report(output: str | Path, *, quick: bool = False, command: str = "cspnet reproduce",
                 log: Callable[[str], None] = lambda s: None) -> Path:  # fmt: skip
    """Measure, then write the report to ``output`` and its plots to ``output.parent / "img"``; returns ``output``."""
    output = Path(output)
    img_dir = output.parent / "img"
    started = datetime.datetime.now(datetime.timezone.utc)

    log("published figures")
    published = published_section(measure_published(), measure_paper_cio())
    rows = run_ablation(quick, log)
    ablation_png = img_dir / "ablation_partial_ratio.png"
    ablation_plot = f"img/{ablation_png.name}" if plot_ablation(rows, ablation_png) else None

    pairs, missing = profile_layer_pairs()
    layers_png = img_dir / "layer_macs.png"
    layers_plot = None
    if pairs:
        plot_layers(pairs, layers_png)
        layers_plot = f"img/{layers_png.name}"

    log("detection necks")
    detection = detection_section(quick)
    log("elastic models")
    elastic = elastic_section(*measure_elastic())

    seconds = (datetime.datetime.now(datetime.timezone.utc) - started).total_seconds()
    header = [
        "# Reproduction: the CSPNet paper's cost figures, measured on this code",
        "",
        f"Generated by `{command}` on {started:%Y-%m-%d %H:%M} UTC in {seconds:.0f} s.",
        f"Machine: {machine_description()}.",
        "",
        "Conventions (see [profiling.md](profiling.md)): params = every parameter; conv weights = the paper's "
        "#Parameter (conv kernels and the classifier, no BN, no biases); GMACs = torchvision/timm "
        "multiply-adds; darknet BFLOPs = 2 x conv MACs / 1e9; CIO = HarDNet's memory traffic. All costs per "
        "image, counted by running the model under `FlopCounterMode` and forward hooks. Do not edit by hand: "
        "rerun the command.",
        "",
    ]
    if quick:
        header += ["Run with `--quick`: latency was not measured.", ""]
    text = "\n".join([*header, *published, "", *ablation_section(rows, ablation_plot), "",
                      *layers_section(layers_plot, pairs, missing), "", *detection, "", *elastic, ""])  # fmt: skip
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    return output
