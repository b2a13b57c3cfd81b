"""FPN / GFM / PANet / EFM on one backbone: BFLOPs, parameters, feature-pyramid memory, CPU latency.

Prints the markdown table that docs/detection-models.md quotes (``cspnet reproduce`` writes the same
table, without latency under ``--quick``)::

    PYTHONPATH=src python benchmarks/detection_necks.py [--model csppeleenet_efm] [--size 416] [--no-latency]
"""

from __future__ import annotations

import argparse

from cspnet.profiling.necks import compare_necks, neck_comparison_table


def main() -> None:
    parser = argparse.ArgumentParser(description="neck comparison on one detector backbone")
    parser.add_argument("--model", default="csppeleenet_efm", help="registered detector whose neck is varied")
    parser.add_argument("--size", type=int, default=416)
    parser.add_argument("--no-latency", action="store_true")
    args = parser.parse_args()
    print(f"{args.model} at {args.size}x{args.size}, one image, 80 classes\n")
    print("\n".join(neck_comparison_table(compare_necks(args.model, args.size, latency=not args.no_latency))))


if __name__ == "__main__":
    main()
