"""``cspnet demo``: the paper's claim in miniature, on the bundled digits.

Trains the default CSPDenseNet and its DenseNet twin with the same recipe and prints parameters,
multiply-adds, top-1 and training time side by side: the CSP version should match the accuracy
with fewer parameters and less computation.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from cspnet.cli.options import add_config_overrides, parse_overrides
from cspnet.cli.train import add_training_arguments
from cspnet.training.config import DEFAULT_MODEL

DEMO_MODELS = (DEFAULT_MODEL, DEFAULT_MODEL.removeprefix("csp"))  # the CSP model and its DenseNet twin


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="train a CSPDenseNet and its DenseNet twin on the digits, compare them")
    add_training_arguments(p)
    add_config_overrides(p, help_suffix=" (applies to every model)")
    p.add_argument("--models", nargs="+", default=list(DEMO_MODELS), help="models to compare (default: %(default)s)")
    p.add_argument("--output", default="runs/demo", help="one sub-folder per model (default runs/demo; replaced)")
    # The same recipe as `cspnet train` (15 epochs): both models trained to convergence, ~1 minute
    # each on 2 CPU cores; fewer epochs would compare two half-trained networks.
    p.set_defaults(func=run)


def count_macs(model, img_size: int) -> int:
    """Multiply-adds of one image, from ``cspnet.profiling``."""
    from cspnet.profiling import profile

    return int(profile(model, (3, img_size, img_size)).macs)


def run(args: argparse.Namespace) -> int:
    from cspnet.models import get_model_entry
    from cspnet.models.backbone import count_params
    from cspnet.training import TrainConfig, fit, load_trained

    overrides = parse_overrides(args.overrides)  # applied to every compared model
    for name in args.models:
        get_model_entry(name)  # unknown names fail before any training
    rows = []
    for name in args.models:
        out = Path(args.output) / name
        if out.exists():
            shutil.rmtree(out)  # a demo always starts from scratch
        schedule = {k: getattr(args, k) for k in ("data", "epochs", "batch_size", "lr", "img_size", "seed",
                                                   "workers", "precision") if getattr(args, k) is not None}  # fmt: skip
        config = TrainConfig(model=name, model_overrides=overrides, output=str(out), **schedule)
        print(f"== training {name} ==", flush=True)
        result = fit(config)
        trained = load_trained(out / "last.ckpt")
        rows.append({
            "model": name,
            "params": count_params(trained.model),
            "macs": count_macs(trained.model, trained.img_size),
            "top1": result.metrics["top1"],
            "time": result.metrics["train_time_s"],
            "img": trained.img_size,
        })  # fmt: skip
    print()
    print(format_table(rows))
    return 0


def format_table(rows: list[dict]) -> str:
    """The models side by side; the last column compares each model with the first one."""
    from cspnet.reports.tables import aligned_table

    base = rows[0]
    cells = []
    for r in rows:
        rel = "" if r is base else (f"params {100 * (r['params'] / base['params'] - 1):+.0f}%, "
                                    f"MACs {100 * (r['macs'] / base['macs'] - 1):+.0f}%, "
                                    f"top-1 {r['top1'] - base['top1']:+.2f}")  # fmt: skip
        cells.append([r["model"], f"{r['params']:,}", f"{r['macs'] / 1e6:.1f}", f"{r['top1']:.2f}", f"{r['time']:.0f}", rel])
    lines = aligned_table(["model", "params", "MMACs", "top-1 %", "train s", "vs first"], cells)
    lines.append(f"(digits held-out split, {rows[0]['img']}x{rows[0]['img']} inputs, same recipe and seed)")
    return "\n".join(lines)
