"""``cspnet reproduce``: regenerate ``docs/reproduction.md`` and its plots from the code.

Examples::

    cspnet reproduce                      # full report, CPU latencies included (a few minutes on 2 cores)
    cspnet reproduce --quick --output /tmp/report.md   # costs and plots only, no timing
"""

from __future__ import annotations

import argparse
import sys


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "reproduce",
        help="regenerate docs/reproduction.md: published vs measured costs, CSP ablation, plots",
        description="Measure every registered model with published figures, the CSP partial-ratio / fusion "
        "ablation and per-layer costs, and write the report with its PNG plots (under <output dir>/img/).",
    )
    p.add_argument(
        "--output", default="docs/reproduction.md", help="report path (default: docs/reproduction.md)"
    )
    p.add_argument("--quick", action="store_true", help="skip the latency measurements")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cspnet.io import check_output_file
    from cspnet.reports.reproduction import write_report

    check_output_file(args.output)  # a folder or an unwritable place: one line, before minutes of work

    command = "cspnet reproduce" + (
        f" --output {args.output}" if args.output != "docs/reproduction.md" else ""
    )
    command += " --quick" if args.quick else ""

    def log(message: str) -> None:
        print(f"[reproduce] {message}", file=sys.stderr, flush=True)

    path = write_report(args.output, quick=args.quick, command=command, log=log)
    print(f"wrote {path} and its plots under {path.parent / 'img'}")
    return 0
