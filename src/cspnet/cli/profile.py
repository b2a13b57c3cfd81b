"""``cspnet profile``: parameters, MACs, darknet BFLOPs, CIO and activation memory of a model.

Examples::

    cspnet profile cspdarknet53_paper                 # table with the per-stage breakdown
    cspnet profile densenet121 --img-size 224 --json  # one JSON object
    cspnet profile --compare densenet201 cspdensenet201 --img-size 224
    cspnet profile cspdensenet121 --set partial_ratio=0.25 --set fusion=fusion_last
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from cspnet.cli.options import add_config_overrides, parse_overrides
from cspnet.reports.tables import aligned_table

# (label, attribute, scale, format) of the totals printed in tables and comparisons.
METRICS: tuple[tuple[str, str, float, str], ...] = (
    ("params", "params", 1e6, "{:.3f}M"),
    ("conv weights (paper #Parameter)", "conv_weight_params", 1e6, "{:.3f}M"),
    ("MACs (torchvision/timm)", "macs", 1e9, "{:.3f}G"),
    ("conv MACs", "conv_macs", 1e9, "{:.3f}G"),
    ("darknet BFLOPs (2 x conv MACs)", "darknet_bflops", 1.0, "{:.3f}"),
    ("CIO (HarDNet)", "cio", 1e6, "{:.2f}M"),
    ("activations (conv/fc outputs)", "activations", 1e6, "{:.2f}M"),
    ("activation memory, all forward tensors", "activation_bytes", 2**20, "{:.1f}MiB"),
    ("activation memory, inference peak", "peak_activation_bytes", 2**20, "{:.1f}MiB"),
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "profile",
        help="parameters, MACs, darknet BFLOPs, CIO and activation memory (per stage)",
        description="Profile a registered model as the CSPNet paper counts costs (see docs/profiling.md).",
    )
    p.add_argument("model", nargs="?", help="registered model name (see `cspnet models`)")
    p.add_argument(
        "--img-size",
        type=int,
        default=None,
        metavar="N",
        help="square input side (default: the model's registered input size)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument(
        "--compare",
        nargs="+",
        metavar="MODEL",
        default=None,
        help="profile several models side by side; differences are against the first",
    )
    add_config_overrides(p, help_suffix=" (applies to every compared model)")
    p.add_argument("--layers", action="store_true", help="also list every conv / fc / pooling layer")
    p.set_defaults(func=run)


def _value(profile: Any, attr: str) -> float:
    return float(getattr(profile, attr))


def format_profile(p: Any, *, layers: bool = False) -> str:
    """A readable report: totals, then one row per stem / stage / head."""
    lines = [f"{p.name} @ {'x'.join(map(str, p.input_size))}"]
    width = max(len(label) for label, *_ in METRICS)
    for label, attr, scale, fmt in METRICS:
        lines.append(f"  {label:<{width}}  {fmt.format(_value(p, attr) / scale)}")
    header = ("part", "output", "params", "conv w", "GMACs", "BFLOPs", "CIO", "MACs %")
    rows = [
        (
            g.name,
            "x".join(map(str, g.output_shape)) or "-",
            f"{g.params / 1e6:.3f}M",
            f"{g.conv_weight_params / 1e6:.3f}M",
            f"{g.macs / 1e9:.3f}",
            f"{g.darknet_bflops:.3f}",
            f"{g.cio / 1e6:.2f}M",
            f"{100 * g.macs / p.macs:.1f}" if p.macs else "-",
        )
        for g in p.groups
    ]
    lines += ["", *aligned_table(header, rows)]
    if layers:
        layer_rows = [
            (
                lc.name,
                lc.kind,
                "x".join(map(str, lc.output_shape)),
                f"{lc.macs / 1e6:.2f}",
                f"{lc.cio / 1e3:.1f}",
            )
            for lc in p.layers
        ]
        lines += ["", *aligned_table(("layer", "kind", "output", "MMACs", "CIO (K)"), layer_rows)]
    return "\n".join(lines)


def format_comparison(profiles: list[Any]) -> str:
    """Totals side by side, each with its percentage difference against the first model."""
    base = profiles[0]
    header = ("metric", *(f"{p.name}@{p.input_size[1]}" for p in profiles))
    rows = []
    for label, attr, scale, fmt in METRICS:
        cells = [fmt.format(_value(base, attr) / scale)]
        for p in profiles[1:]:
            ref = _value(base, attr)
            diff = f" ({100 * (_value(p, attr) - ref) / ref:+.1f}%)" if ref else ""
            cells.append(fmt.format(_value(p, attr) / scale) + diff)
        rows.append((label, *cells))
    return "\n".join(aligned_table(header, rows))


def _check_img_size(img_size: int, names: list[str], overrides: dict[str, Any]) -> None:
    """``--img-size`` in range and at least every model's stride (models built on the meta device: free)."""
    import torch

    from cspnet.metadata import check_img_size
    from cspnet.models import create_model

    check_img_size(img_size)
    with torch.device("meta"):
        for name in names:
            check_img_size(img_size, create_model(name, **overrides))


def run(args: argparse.Namespace) -> int:
    from cspnet.cli.main import CLIError
    from cspnet.profiling import profile

    names = ([args.model] if args.model else []) + (args.compare or [])
    if not names:
        raise CLIError("name a model (`cspnet profile densenet121`) or several with --compare A B ...")
    if args.compare and len(names) < 2:
        raise CLIError("--compare needs at least two models")
    overrides = parse_overrides(args.overrides)
    if args.img_size is not None:
        _check_img_size(args.img_size, names, overrides)
    profiles = [profile(n, args.img_size, **overrides) for n in names]

    if args.json:
        if len(profiles) == 1:
            print(json.dumps({**profiles[0].to_dict(layers=args.layers), "overrides": overrides}))
        else:
            base = profiles[0]
            models = []
            for p in profiles:
                d = p.to_dict(layers=args.layers)
                d["diff_pct"] = {
                    attr: 100 * (_value(p, attr) - _value(base, attr)) / _value(base, attr)
                    for _, attr, _, _ in METRICS
                    if _value(base, attr)
                }
                models.append(d)
            print(json.dumps({"baseline": base.name, "overrides": overrides, "models": models}))
        return 0
    if len(profiles) == 1:
        print(format_profile(profiles[0], layers=args.layers))
    else:
        print(format_comparison(profiles))
    return 0
