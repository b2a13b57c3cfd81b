"""``cspnet benchmark``: inference / training throughput, latency and peak memory, as a table.

Examples::

    cspnet benchmark densenet121 cspdarknet53 --batch-size 16 --channels-last
    cspnet benchmark densenet121 --backend torch onnxruntime openvino --precision fp32 int8
    cspnet benchmark densenet201 cspdensenet201 --mode both --img-size 224 --output results.md
    cspnet benchmark cspdensenet201 --mode train --set memory_efficient=True --batch-size 32

One row per (model, mode, backend, precision), each measured in a fresh Python process by
:mod:`cspnet.inference.benchmark` (which says how throughput, latency and peak memory are measured).
Inference rows run the model as ``cspnet predict`` does, through :func:`cspnet.inference.load_model`
on each ``--backend``; ``onnxruntime`` and ``openvino`` rows run the folded model exported to ONNX,
``int8`` rows that export quantised on ``--calibration-data`` (the digits by default: speed does not
depend on the images). Combinations an engine does not run (onnxruntime bf16, torch int8, training
on an engine) are skipped with a note. The table is printed once, a row as soon as it is measured.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from cspnet.cli.options import add_config_overrides, parse_overrides
from cspnet.precision import PRECISIONS
from cspnet.reports.tables import markdown_table as markdown_table_lines

_MEASURE_NAMES = ("BenchSpec", "PeakMemory", "measure", "measure_isolated", "MODES")


def __getattr__(name: str) -> Any:
    """The measurement engine is :mod:`cspnet.inference.benchmark`; its old names still work here."""
    if name in _MEASURE_NAMES:
        from cspnet.inference import benchmark as engine

        return getattr(engine, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

# --- tables ---------------------------------------------------------------------------------------

COLUMNS = (
    ("model", "{model}"),
    ("mode", "{mode}"),
    ("backend", "{backend}"),
    ("batch", "{batch_size}"),
    ("input", "{img_size}"),
    ("precision", "{precision}"),
    ("setup", "{setup}"),
    ("img/s", "{img_per_s:.1f}"),
    ("latency (ms/batch)", "{latency_ms:.0f}"),
    ("peak memory (MiB)", "{peak_mib:.0f}"),
)


def describe_setup(result: dict[str, Any]) -> str:
    if result.get("backend", "torch") != "torch":
        calibration = f", calibrated on {result['calibration_images']} {result['calibration_data']}"
        return result.get("engine_setup", "") + (calibration if result["precision"] == "int8" else "")
    parts = []
    if result["mode"] == "inference" and result["optimize"]:
        parts.append("optimized")
    if result["channels_last"]:
        parts.append("channels_last")
    if result.get("jit") and result["mode"] == "inference":
        parts.append("jit.freeze")
    if result["compile"]:
        parts.append("compile")
    if not result.get("tune_allocator", True) and result["mode"] == "inference":
        parts.append("default malloc")
    parts += [f"{k}={v}" for k, v in result.get("overrides", {}).items()]
    return ", ".join(parts) or "eager"


def _cells(result: dict[str, Any]) -> list[str]:
    row = {"backend": "torch", **result, "setup": describe_setup(result)}
    return [fmt.format(**row) for _, fmt in COLUMNS]


def table_header() -> list[str]:
    """The Markdown header lines (the table is printed a row at a time, as each is measured)."""
    return markdown_table_lines([c for c, _ in COLUMNS], [])


def table_row(result: dict[str, Any]) -> str:
    return markdown_table_lines([c for c, _ in COLUMNS], [_cells(result)])[-1]


def markdown_table(results: list[dict[str, Any]]) -> str:
    """Results as a GitHub-flavoured markdown table."""
    return "\n".join([*table_header(), *(table_row(r) for r in results)])


# --- CLI ------------------------------------------------------------------------------------------


def add_parser(sub: argparse._SubParsersAction) -> None:
    from cspnet.cli.backend_options import add_backend_option
    from cspnet.inference.benchmark import MODES

    p = sub.add_parser(
        "benchmark",
        help="inference / training throughput, latency and peak memory",
        description="Measure img/s, batch latency and peak memory, one row per model, mode, backend and "
        "precision, each in a fresh process.",
    )
    p.add_argument("models", nargs="+", metavar="MODEL", help="registered model names")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--img-size", type=int, default=None, metavar="N", help="default: each model's registered size")
    p.add_argument("--precision", nargs="+", choices=PRECISIONS, default=["fp32"], metavar="PRECISION",
                   help="one or more of fp32, bf16, fp16 (torch: weights cast for inference, autocast for "
                   "training), int8 (onnxruntime, openvino); default fp32")
    add_backend_option(p, multiple=True)
    p.add_argument("--calibration-data", default="digits", metavar="PATH|digits",
                   help="int8 rows: images the quantisation is calibrated on (default: the digits)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                   help="NHWC weights and inputs (default: on)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (inductor)")
    p.add_argument("--jit", action="store_true", help="inference: trace, torch.jit.freeze, torch.jit.optimize_for_inference")
    p.add_argument("--mode", choices=(*MODES, "both"), default="inference")
    p.add_argument("--optimize", action=argparse.BooleanOptionalAction, default=True,
                   help="inference: cspnet.export.optimize_for_inference first (default: on)")
    p.add_argument("--default-malloc", action="store_true",
                   help="inference: keep glibc's allocator defaults (see cspnet.runtime.tune_cpu_allocator)")
    add_config_overrides(p, help_suffix=" (applies to every model), e.g. --set memory_efficient=True")
    p.add_argument("--threads", type=int, default=None,
                   help="compute threads (default: torch's choice; one per physical core for the engines)")
    p.add_argument("--seconds", type=float, default=3.0, help="minimum timed seconds per measurement")
    p.add_argument("--output", metavar="FILE.md", help="also write the table (markdown) to this file")
    p.set_defaults(func=run)  # fmt: skip


def _skip_reason(spec: Any) -> str | None:
    """Why an engine does not run this combination, or None when it does."""
    from cspnet.precision import BACKEND_PRECISIONS as ENGINE_PRECISIONS

    if spec.backend == "torch":
        return "int8 runs on onnxruntime and openvino" if spec.precision == "int8" else None
    if spec.mode != "inference":
        return f"{spec.backend} runs inference only"
    if spec.jit or spec.compile or not spec.optimize:
        return f"{spec.backend} runs the optimized export only (no --jit, --compile, --no-optimize)"
    if spec.precision not in ENGINE_PRECISIONS[spec.backend]:
        return f"{spec.backend} runs {', '.join(ENGINE_PRECISIONS[spec.backend])}"
    return None


def _check_models(names: list[str], overrides: dict[str, Any]) -> None:
    """Fail fast, in this process, on unknown names, detectors and bad overrides."""
    import torch

    from cspnet.models import create_model
    from cspnet.models.registry import require_classifier

    for name in names:
        require_classifier(name, "cspnet benchmark")
        with torch.device("meta"):
            create_model(name, **overrides)


def _plan(args: argparse.Namespace, overrides: dict[str, Any]) -> tuple[list[Any], list[str]]:
    """Every (model, mode, backend, precision) to measure, and those an engine cannot run (with why)."""
    from cspnet.inference.benchmark import MODES, BenchSpec

    modes = MODES if args.mode == "both" else (args.mode,)
    specs, skipped = [], []
    for name in args.models:
        for mode in modes:
            for backend in dict.fromkeys(args.backend):
                for precision in dict.fromkeys(args.precision):
                    spec = BenchSpec(
                        model=name, mode=mode, batch_size=args.batch_size, img_size=args.img_size,
                        precision=precision, channels_last=args.channels_last, optimize=args.optimize,
                        jit=args.jit, compile=args.compile, overrides=overrides, min_seconds=args.seconds,
                        threads=args.threads, tune_allocator=not args.default_malloc, backend=backend,
                        calibration_data=args.calibration_data,
                    )  # fmt: skip
                    reason = _skip_reason(spec)
                    if reason:
                        skipped.append(f"{name} {mode} {backend} {precision} ({reason})")
                    else:
                        specs.append(spec)
    return specs, skipped


def run(args: argparse.Namespace) -> int:
    from cspnet.cli.backend_options import check_backends_installed, warn_if_bf16_is_emulated
    from cspnet.inference.benchmark import measure_isolated
    from cspnet.io import atomic_write_text

    if args.batch_size < 1:
        raise ValueError(f"--batch-size {args.batch_size} is invalid: expected a positive integer")
    overrides = parse_overrides(args.overrides)
    _check_models(args.models, overrides)
    check_backends_installed(list(dict.fromkeys(args.backend)))
    if "bf16" in args.precision:
        warn_if_bf16_is_emulated()
    specs, skipped = _plan(args, overrides)
    if not specs:
        raise ValueError(f"nothing to measure: {'; '.join(skipped)}")
    for line in table_header():
        print(line, flush=True)
    results = []
    for spec in specs:  # one table, a row as soon as it is measured
        results.append(measure_isolated(spec))
        print(table_row(results[-1]), flush=True)
    if skipped:
        print(f"skipped: {'; '.join(skipped)}", file=sys.stderr)
    if args.output:
        atomic_write_text(args.output, markdown_table(results) + "\n")
    return 0
