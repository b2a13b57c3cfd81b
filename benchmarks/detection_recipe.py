"""The detection recipe for user data, measured: one setting changed at a time (not a test: it takes a while).

Each setting is a list of ``cspnet detect train`` flags on top of the shared ones (data, image side,
batch, epochs, seed); every run is the command line itself, in a process of its own, so that the
report can show exactly what reproduces it. Runs already in ``--output`` are kept (a killed
benchmark continues where it stopped); ``--only`` runs a subset.

    PYTHONPATH=src python benchmarks/real_photos.py --output data/real_photos
    PYTHONPATH=src python benchmarks/detection_recipe.py \\
        --data data/real_photos/data.yaml --img-size 128 --batch-size 16 --epochs 15 \\
        --output benchmarks/results/recipe/real_photos

Writes ``recipe.json`` (every run: flags, metrics, wall time, the load average before and after, the
CPU) and ``recipe.md`` (one table) in ``--output``. The settings (:data:`SETTINGS`):

* ``before``: the defaults for user data before issue 20 (AdamW lr 2e-3, YOLOv3's single best
  anchor, offsets loss, no mosaic, no BN calibration);
* ``base``: the embedded digits' recipe (lr 1e-2, YOLOv4's extra anchors above shape IoU 0.25) with
  the CIoU box loss, everything else off: the reference every other row changes one thing of;
* the others: ``base`` with one change; ``recipe``: the defaults this measurement chose (no flags).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from cspnet.cpu import cpu_model

OFF = ["--mosaic", "0", "--mixup", "0", "--multi-scale", "0", "--fit-anchors", "off"]
BASE = ["--lr", "0.01", "--anchor-threshold", "0.25", "--box-loss", "ciou", *OFF]
SETTINGS: dict[str, list[str]] = {
    "before": ["--lr", "0.002", "--anchor-threshold", "1", "--box-loss", "offsets", "--calibrate-bn", "0", *OFF],
    "base": BASE,
    "offsets": [*BASE, "--box-loss", "offsets"],
    "best anchor only": [*BASE, "--anchor-threshold", "1"],
    "mosaic 0.5": [*BASE, "--mosaic", "0.5"],
    "mosaic 1": [*BASE, "--mosaic", "1"],
    "mixup 0.2": [*BASE, "--mixup", "0.2"],
    "multi-scale 0.3": [*BASE, "--multi-scale", "0.3"],
    "fit anchors": [*BASE, "--fit-anchors", "on"],
    "lr 5e-3": [*BASE, "--lr", "0.005"],
    "lr 2e-2": [*BASE, "--lr", "0.02"],
    "batch 8": [*BASE, "--batch-size", "8"],
    "warm-up 3": [*BASE, "--warmup-epochs", "3"],
    "no BN calibration": [*BASE, "--calibrate-bn", "0"],
    "recipe": [],
}

def load_average() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())

def command(args: argparse.Namespace, flags: list[str], folder: Path) -> list[str]:
    shared = ["--data", args.data, "--img-size", str(args.img_size), "--batch-size", str(args.batch_size),
              "--epochs", str(args.epochs), "--seed", str(args.seed), "--checkpoint-every", "0",
              "--output", str(folder), *args.extra]  # fmt: skip
    return ["cspnet", "detect", "train", *shared, *flags]

def run_one(args: argparse.Namespace, name: str, flags: list[str]) -> dict:
    folder = args.output / "runs" / f"{name.replace(' ', '_')}-seed{args.seed}"
    argv = command(args, flags, folder)
    before, started = load_average(), time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "cspnet.cli.main", *argv[1:]], capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        return {"setting": name, "command": " ".join(argv), "error": done.stderr.strip().splitlines()[-1:]}
    metrics = json.loads((folder / "metrics.json").read_text())
    notes = [line for line in done.stderr.splitlines() if "anchors fitted" in line]
    return {"setting": name, "seed": args.seed, "command": " ".join(argv), "map": metrics["map"],
            "map50": metrics["map50"], "best_map": metrics["best_map"], "loss": metrics["loss"],
            "train_time_s": metrics["train_time_s"], "wall_s": round(wall, 1), "load_before": before,
            "load_after": load_average(), "cpu": cpu_model(), "notes": notes}  # fmt: skip

def write_report(out: Path, runs: list[dict], args: argparse.Namespace) -> None:
    from cspnet.io import atomic_write_text

    atomic_write_text(out / "recipe.json", json.dumps(runs, indent=2) + "\n")
    lines = [f"`{args.data}`, {args.img_size} px, batch {args.batch_size}, {args.epochs} epochs, seed {args.seed}",
             "", "| setting | mAP@.5 | mAP | best mAP | val loss | train s | wall s | load before / after |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in runs:
        if "error" in r:
            lines.append(f"| {r['setting']} | error: {' '.join(r['error'])} | | | | | | |")
            continue
        lines.append(f"| {r['setting']} | {r['map50']:.3f} | {r['map']:.3f} | {r['best_map']:.3f} | {r['loss']:.1f} | "
                     f"{r['train_time_s']:.0f} | {r['wall_s']:.0f} | {r['load_before']} / {r['load_after']} |")  # fmt: skip
    cpus = sorted({r["cpu"] for r in runs if "cpu" in r})
    lines += ["", f"CPU: {', '.join(cpus)}; flags of each setting in recipe.json."]
    atomic_write_text(out / "recipe.md", "\n".join(lines) + "\n")

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="a YOLO data.yaml or COCO json (benchmarks/real_photos.py writes both sets)")
    p.add_argument("--img-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", nargs="+", choices=sorted(SETTINGS), help="these settings (default: all)")
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more flags for every run (last)")
    p.add_argument("--output", type=Path, required=True)
    args = p.parse_args(argv)
    args.output.mkdir(parents=True, exist_ok=True)
    report = args.output / "recipe.json"
    runs: list[dict] = json.loads(report.read_text()) if report.is_file() else []
    for name in args.only or list(SETTINGS):
        if any(r["setting"] == name and r.get("seed") == args.seed and "error" not in r for r in runs):
            continue
        print(f"{name}: {' '.join(SETTINGS[name]) or '(the defaults)'} ...", flush=True)
        result = run_one(args, name, SETTINGS[name])
        runs = [r for r in runs if not (r["setting"] == name and r.get("seed") == args.seed)] + [result]
        print(f"  {json.dumps({k: result.get(k) for k in ('map50', 'map', 'wall_s', 'error')})}", flush=True)
        write_report(args.output, runs, args)
    return 0

if __name__ == "__main__":
    sys.exit(main())
