"""FPN / GFM / PANet / EFM on one backbone: BFLOPs, parameters, feature-pyramid memory, CPU latency.

Writes the markdown table that docs/detection-models.md quotes::

    PYTHONPATH=src python benchmarks/detection_necks.py [--backbone-model csppeleenet_efm] [--size 416] [--no-latency]

Costs come from the meta device (exact, machine-independent); latency is the median of a few
single-thread CPU runs of one image (machine- and load-dependent: read it as a ratio).
"""

from __future__ import annotations

import argparse

import torch

import cspnet
from cspnet.detection.costs import feature_pyramid_memory
from cspnet.profiling.latency import measure_latency

VARIANTS: list[tuple[str, dict]] = [
    ("FPN (YOLOv3)", {"neck": "fpn"}),
    ("GFM (Fig. 6b)", {"neck": "gfm"}),
    ("PANet", {"neck": "panet"}),
    ("EFM, Maxout 4 (registered)", {"neck": "efm"}),
    ("EFM without Maxout", {"neck": "efm", "maxout": 0}),
    ("EFM (SAM)", {"neck": "efm", "sam": True}),
    ("EFM (SPP)", {"neck": "efm", "spp": True}),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone-model", default="csppeleenet_efm", help="registered detector to vary the neck of")
    parser.add_argument("--size", type=int, default=416)
    parser.add_argument("--no-latency", action="store_true")
    args = parser.parse_args()
    mib = 2**20
    print(f"{args.backbone_model} at {args.size}x{args.size}, one image, 80 classes\n")
    header = "| neck | BFLOPs | neck BFLOPs | params | neck memory, all (MiB) | neck peak (MiB) | concatenations (MiB) |"
    if not args.no_latency:
        header += " CPU ms (1 thread) |"
    print(header)
    print("|" + "|".join(" --- " for _ in range(header.count("|") - 1)) + "|")
    for label, overrides in VARIANTS:
        p = cspnet.profile(args.backbone_model, args.size, **overrides)
        neck = next(g for g in p.groups if g.name == "neck")
        memory = feature_pyramid_memory(args.backbone_model, args.size, **overrides)
        row = (
            f"| {label} | {p.darknet_bflops:.3f} | {neck.darknet_bflops:.3f} | {p.params / 1e6:.2f}M | "
            f"{memory.total_bytes / mib:.2f} | {memory.peak_bytes / mib:.2f} | {memory.concat_bytes / mib:.2f} |"
        )
        if not args.no_latency:
            torch.manual_seed(0)
            model = cspnet.create_model(args.backbone_model, **overrides).eval()
            ms = measure_latency(model, (3, args.size, args.size), warmup=1, iters=5, threads=1)
            row += f" {ms:.1f} |"
        print(row, flush=True)


if __name__ == "__main__":
    main()
