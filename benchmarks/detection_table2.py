"""The paper's Table 2 in miniature: one backbone with FPN, GFM, EFM, EFM+SAM and EFM+SPP necks,
each trained on the embedded digits detection set with several seeds (not a test: it takes a while).

    PYTHONPATH=src python benchmarks/detection_table2.py --epochs 12 --seeds 0 1 --output benchmarks/results/table2

On 2 cores, one process per seed (one thread each) is twice as fast, then ``--merge`` writes one report::

    OMP_NUM_THREADS=1 python benchmarks/detection_table2.py --seeds 0 --output /tmp/t2_seed0 &
    OMP_NUM_THREADS=1 python benchmarks/detection_table2.py --seeds 1 --output /tmp/t2_seed1 &
    wait; python benchmarks/detection_table2.py --merge /tmp/t2_seed0 /tmp/t2_seed1 --output benchmarks/results/table2

Writes ``table2.json`` (every run), ``table2.md`` (BFLOPs, parameters, CPU latency, mAP and mAP@.5,
mean and spread over seeds) and ``table2.png`` (mAP@.5 against BFLOPs) in ``--output``.
The backbone is the small detector's (``cspdensenet_bc40_efm``: CSPDenseNet-BC-40, strides 4/8/16).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

# name -> config overrides of cspdensenet_bc40_efm (the paper's Table 2 rows, on this backbone)
VARIANTS = {
    "FPN": {"neck": "fpn"},
    "GFM": {"neck": "gfm"},
    "EFM": {"neck": "efm"},
    "EFM (SAM)": {"neck": "efm", "sam": True},
    "EFM (SPP)": {"neck": "efm", "spp": True},
}
DETECTOR = "cspdensenet_bc40_efm"
SIDE = 64  # the embedded set's canvas


def measure_costs(overrides: dict) -> dict:
    import cspnet
    from cspnet.profiling import profile
    from cspnet.profiling.latency import measure_latency

    p = profile(DETECTOR, SIDE, num_classes=10, **overrides)
    model = cspnet.create_model(DETECTOR, num_classes=10, **overrides)
    latency = measure_latency(model, (3, SIDE, SIDE), warmup=3, iters=15, threads=1)
    return {"bflops": round(p.darknet_bflops, 4), "params": p.params, "latency_ms": round(latency, 2)}


def train(name: str, overrides: dict, seed: int, epochs: int, limit: int | None, out: Path) -> dict:
    from cspnet.training import DetectionTrainConfig, fit

    folder = out / "runs" / f"{name.replace(' ', '').replace('(', '_').replace(')', '')}-seed{seed}"
    started = time.perf_counter()
    cfg = DetectionTrainConfig(model_overrides=overrides, seed=seed, epochs=epochs, limit_train_batches=limit,
                               output=str(folder), checkpoint_every=0)  # fmt: skip
    m = fit(cfg, verbose=False).metrics
    return {"variant": name, "seed": seed, "map": m["map"], "map50": m["map50"], "seconds": round(time.perf_counter() - started)}


def write_report(out: Path, costs: dict, runs: list[dict], epochs: int) -> None:
    from matplotlib.figure import Figure

    lines = [f"| neck | BFLOPs @{SIDE} | parameters | CPU latency (1 thread, ms) | mAP | mAP@.5 | seeds |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    points = []
    for name in VARIANTS:
        mine = [r for r in runs if r["variant"] == name]
        maps = [r["map"] or 0.0 for r in mine]
        map50s = [r["map50"] or 0.0 for r in mine]

        def cell(values: list[float]) -> str:
            spread = f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else ""
            return f"{statistics.mean(values):.3f}{spread}"

        c = costs[name]
        lines.append(f"| {name} | {c['bflops']:.3f} | {c['params']:,} | {c['latency_ms']:.1f} | {cell(maps)} | "
                     f"{cell(map50s)} | {len(mine)} |")  # fmt: skip
        points.append((c["bflops"], statistics.mean(map50s), name))
    (out / "table2.md").write_text(f"{epochs} epochs on the embedded digits set, {DETECTOR} backbone\n\n" + "\n".join(lines) + "\n")
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for x, y, label in points:
        ax.scatter([x], [y])
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4))
    ax.set(xlabel=f"BFLOPs at {SIDE}x{SIDE}", ylabel="mAP@.5 (mean over seeds)", title="Table 2 in miniature")
    fig.tight_layout()
    fig.savefig(out / "table2.png", dpi=100)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--limit-train-batches", type=int, help="batches per epoch (a quick check of the script)")
    parser.add_argument("--output", default="benchmarks/results/table2")
    parser.add_argument("--merge", nargs="+", metavar="DIR", help="combine the table2.json of these runs instead")
    args = parser.parse_args(argv)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    if args.merge:
        parts = [json.loads((Path(d) / "table2.json").read_text()) for d in args.merge]
        runs = [r for part in parts for r in part["runs"]]
        merged = {"costs": parts[0]["costs"], "runs": runs, "epochs": parts[0]["epochs"]}
        (out / "table2.json").write_text(json.dumps(merged, indent=2) + "\n")
        write_report(out, merged["costs"], runs, merged["epochs"])
        print((out / "table2.md").read_text())
        return 0
    costs = {name: measure_costs(overrides) for name, overrides in VARIANTS.items()}
    runs = []
    for name, overrides in VARIANTS.items():
        for seed in args.seeds:
            runs.append(train(name, overrides, seed, args.epochs, args.limit_train_batches, out))
            print(runs[-1], flush=True)
    (out / "table2.json").write_text(json.dumps({"costs": costs, "runs": runs, "epochs": args.epochs}, indent=2) + "\n")
    write_report(out, costs, runs, args.epochs)
    print((out / "table2.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
