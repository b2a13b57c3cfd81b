"""Regenerate ``docs/reproduction.md``: our measured costs against the published ones, the CSP ablation
over partial ratio and fusion strategy, and per-layer cost plots, all computed from the code.

Used by ``cspnet reproduce``; every number in the report comes from :func:`cspnet.profiling.profile`
(or :func:`measure_latency`) at the moment the report is written.
"""

from __future__ import annotations

import datetime
import os
import platform
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

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

# Memory-traffic figures the paper states in its text (spec 3.1 / 3.7, Fig. 8), not in the registry.
PAPER_CIO_M = {"resnext50_paper": 34.41, "cspresnext50_paper": 32.64}

# The CSP ablation: (family label, baseline model, CSP model to vary).
ABLATIONS = (("CSPDenseNet-201", "densenet201", "cspdensenet201"), ("CSPPeleeNet", "peleenet", "csppeleenet"))

# Pairs whose per-layer / per-stage costs are plotted (the paper's Figure 7 idea).
LAYER_PAIRS = (("densenet201", "cspdensenet201"), ("peleenet", "csppeleenet"))


@dataclass
class AblationRow:
    family: str
    model: str
    partial_ratio: float
    fusion: str
    profile: ModelProfile | None
    latency_ms: float | None
    error: str = ""


def _pct(ours: float, ref: float) -> str:
    return f"{100 * (ours - ref) / ref:+.2f}%" if ref else "-"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"] + [
        "| " + " | ".join(r) + " |" for r in rows
    ]


def published_section() -> list[str]:
    """Every registered model with published figures, ours beside them."""
    rows: list[list[str]] = []
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
                ours = ours_fn(p)
                rows.append(
                    [
                        name,
                        figures.get("source", "?"),
                        str(side),
                        label,
                        f"{ref:.3f}",
                        f"{ours:.3f}",
                        _pct(ours, ref),
                    ]
                )
    cio_rows = []
    for name, ref in PAPER_CIO_M.items():
        if name in list_models():
            ours = profile(name, 256).cio / 1e6
            cio_rows.append([name, f"{ref:.2f}", f"{ours:.3f}", _pct(ours, ref)])
    lines = [
        "## 1. Published figures against ours",
        "",
        "Every registered model whose `ModelEntry.published` carries cost figures, profiled at the input "
        "side the figures are for. Published values are rounded as published (the README prints conv "
        "weights to 0.01M), so differences within that rounding are agreement.",
        "",
        *_table(["model", "source", "input", "metric", "published", "ours", "difference"], rows),
        "",
        'Memory traffic stated in the paper\'s text (Fig. 8: "34.4M vs 32.6M"; spec 3.1 gives 34.41M / 32.64M), '
        "CIO at 256x256:",
        "",
        *_table(["model", "paper CIO (M)", "ours (M)", "difference"], cio_rows),
    ]
    return lines


def run_ablation(quick: bool, log: Callable[[str], None]) -> list[AblationRow]:
    """Baseline and CSP model over partial ratio x fusion, with costs and (unless quick) latency."""
    rows: list[AblationRow] = []
    registered = set(list_models())
    for family, base, csp in ABLATIONS:
        if base not in registered or csp not in registered:
            rows.append(AblationRow(family, csp, 0.0, "", None, None, f"{base} / {csp} not registered"))
            continue
        variants = [(base, 0.0, "baseline", {})] + [
            (csp, r, f, {"partial_ratio": r, "fusion": f}) for r in PARTIAL_RATIOS for f in FUSIONS
        ]
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
            table.append(
                [r.family, r.model, f"{r.partial_ratio:g}", r.fusion, "-", "-", "-", "-", "-", r.error]
            )
            continue
        p = r.profile
        if r.fusion == "baseline":
            base, base_latency = p, r.latency_ms
        ref = base or p
        lat = "-" if r.latency_ms is None else f"{r.latency_ms:.1f}"
        if r.latency_ms is not None and base_latency and r.fusion != "baseline":
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
    header = [
        "family",
        "model",
        "gamma",
        "fusion",
        "params (M)",
        "GMACs",
        "BFLOPs",
        "CIO (M)",
        "latency (ms)",
        "note",
    ]
    lines += _table(header, table)
    lines += [
        "",
        "The paper's PeleeNet points (spec 1.4, BFLOPs at 224): PeleeNet 1.017; CSPPeleeNet (gamma 0.5) 0.888 "
        "(-13 %); fusion last about 0.80 (-21 %); fusion first about 0.755 (-26 %); gamma 0.25: -11 % (fusion "
        "last), -3 % (CSP).",
    ]
    if plot:
        lines += ["", f"![cost against partial ratio]({plot})"]
    return lines


def plot_ablation(rows: list[AblationRow], path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = [f for f, *_ in ABLATIONS if any(r.family == f and r.profile for r in rows)]
    if not families:
        return False
    metrics = [
        ("GMACs", lambda p, r: p.macs / 1e9),
        ("params (M)", lambda p, r: p.params / 1e6),
        ("CIO (M)", lambda p, r: p.cio / 1e6),
        ("latency (ms)", lambda p, r: r.latency_ms),
    ]
    # Without timings (--quick) the latency panel would be empty.
    metrics = [m for m in metrics if any(m[1](r.profile, r) is not None for r in rows if r.profile)]
    fig, axes = plt.subplots(
        len(families), len(metrics), figsize=(4 * len(metrics), 3.2 * len(families)), squeeze=False
    )
    for row_axes, family in zip(axes, families):
        fam = [r for r in rows if r.family == family and r.profile]
        base = next((r for r in fam if r.fusion == "baseline"), None)
        for ax, (label, value) in zip(row_axes, metrics):
            for fusion in FUSIONS:
                pts = [(r.partial_ratio, value(r.profile, r)) for r in fam if r.fusion == fusion]
                pts = [(x, y) for x, y in pts if y is not None]
                if base is not None and value(base.profile, base) is not None:
                    pts = [(0.0, value(base.profile, base)), *pts]
                if pts:
                    ax.plot(*zip(*pts), marker="o", label=fusion)
            ax.set_title(f"{family}: {label}", fontsize=9)
            ax.set_xlabel("partial ratio gamma (0 = baseline)")
            ax.grid(alpha=0.3)
        row_axes[0].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def plot_layers(pairs: list[tuple[ModelProfile, ModelProfile]], path: Path) -> None:
    """MACs per conv layer in network order, and per stage, for each (baseline, CSP) pair."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(pairs), 2, figsize=(14, 3.6 * len(pairs)), squeeze=False,
                             gridspec_kw={"width_ratios": [3, 1]})  # fmt: skip
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
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


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
            *_table(["part", f"{pair[0].name} GMACs", f"{pair[1].name} GMACs", "CIO", "CIO (CSP)"], rows),
            "",
            f"Largest single layer: {peak[0]:.1f} MMACs vs {peak[1]:.1f} MMACs ({_pct(peak[1], peak[0])}).",
            "",
        ]
    if missing:
        lines += [f"Not plotted (not registered yet): {', '.join(missing)}.", ""]
    if plot:
        lines += [f"![MACs per layer and per stage]({plot})"]
    return lines


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


def detection_section(quick: bool) -> list[str]:
    """EFM / GFM / FPN (Table 2's necks) on CSPPeleeNet at 416: costs, pyramid memory, latency."""
    from cspnet.detection.costs import compare_necks, neck_comparison_table

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


def write_report(output: Path, *, quick: bool = False, command: str = "cspnet reproduce",
                 log: Callable[[str], None] = lambda s: None) -> Path:  # fmt: skip
    """Write the report to ``output`` and its plots to ``output.parent / "img"``; returns ``output``."""
    output = Path(output)
    img_dir = output.parent / "img"
    started = datetime.datetime.now(datetime.timezone.utc)

    log("published figures")
    published = published_section()
    rows = run_ablation(quick, log)
    ablation_png = img_dir / "ablation_partial_ratio.png"
    ablation_plot = f"img/{ablation_png.name}" if plot_ablation(rows, ablation_png) else None

    registered = set(list_models())
    pairs = [(profile(a), profile(b)) for a, b in LAYER_PAIRS if a in registered and b in registered]
    missing = [f"{a} / {b}" for a, b in LAYER_PAIRS if a not in registered or b not in registered]
    layers_png = img_dir / "layer_macs.png"
    layers_plot = None
    if pairs:
        plot_layers(pairs, layers_png)
        layers_plot = f"img/{layers_png.name}"

    log("detection necks")
    detection = detection_section(quick)

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
                      *layers_section(layers_plot, pairs, missing), "", *detection, ""])  # fmt: skip
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    return output
