"""``cspnet benchmark``: inference / training throughput, latency and peak memory, as a table.

Examples::

    cspnet benchmark densenet121 cspdarknet53 --batch-size 16 --channels-last
    cspnet benchmark densenet121 --backend torch onnxruntime openvino --precision fp32 int8
    cspnet benchmark densenet201 cspdensenet201 --mode both --img-size 224 --output results.md
    cspnet benchmark cspdensenet201 --mode train --set memory_efficient=True --batch-size 32
    cspnet benchmark cspresnext50_panet_spp --batch-size 1 --img-size 416 --backend torch openvino --precision fp32 int8

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
import os
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


DETECTOR_COLUMNS = (
    ("e2e img/s", "{e2e_img_per_s:.1f}"),
    ("ms/img: decode, letterbox, model, NMS", "{stages}"),
)


def _stages(result: dict[str, Any]) -> str:
    stages = result.get("stage_ms")
    if not stages:
        return ""
    return ", ".join(f"{stages[name]:.1f}" for name in ("decode", "letterbox", "model", "postprocess"))


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


def _columns(detectors: bool) -> tuple[tuple[str, str], ...]:
    return COLUMNS + DETECTOR_COLUMNS if detectors else COLUMNS


def _cells(result: dict[str, Any], detectors: bool = False) -> list[str]:
    row = {"backend": "torch", **result, "setup": describe_setup(result), "stages": _stages(result)}
    cells = [fmt.format(**row) for _, fmt in COLUMNS]
    if detectors:
        cells += [fmt.format(**row) if "e2e_img_per_s" in row else "" for _, fmt in DETECTOR_COLUMNS]
    return cells


def table_header(detectors: bool = False) -> list[str]:
    """The Markdown header lines (the table is printed a row at a time, as each is measured);
    ``detectors``: with the end-to-end columns."""
    return markdown_table_lines([c for c, _ in _columns(detectors)], [])


def table_row(result: dict[str, Any], detectors: bool = False) -> str:
    return markdown_table_lines([c for c, _ in _columns(detectors)], [_cells(result, detectors)])[-1]


def markdown_table(results: list[dict[str, Any]]) -> str:
    """Results as a GitHub-flavoured markdown table (end-to-end columns when a row is a detector's)."""
    detectors = any("e2e_img_per_s" in r for r in results)
    return "\n".join([*table_header(detectors), *(table_row(r, detectors) for r in results)])


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
    p.add_argument("models", nargs="+", metavar="MODEL", help="registered model names (classifiers and detectors)")
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
    p.add_argument("--weights", metavar="FILE", help="weights any create_model(pretrained=...) reads (darknet "
                   ".weights, .pth, .safetensors), or a training checkpoint (run with its classes and input size): "
                   "e.g. a trained detector, whose NMS takes the time a real one takes")
    p.add_argument("--images", metavar="FOLDER", help="detectors, end to end: the image files to decode and detect "
                   "in (default: synthetic 640x480 JPEGs)")
    p.add_argument("--output", metavar="FILE.md", help="also write the table (markdown) to this file")
    p.set_defaults(func=run)  # fmt: skip


def _skip_reason(spec: Any) -> str | None:
    """Why an engine does not run this combination, or None when it does."""
    from cspnet.models import get_model_entry
    from cspnet.precision import BACKEND_PRECISIONS as ENGINE_PRECISIONS

    if get_model_entry(spec.model).task == "detection" and (spec.mode != "inference" or spec.jit or spec.compile
                                                             or not spec.optimize or not spec.channels_last):  # fmt: skip
        return "detectors: optimized inference through load_model only (no training, --jit, --compile, NCHW)"
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
    """Fail fast, in this process, on unknown names and bad overrides."""
    import torch

    from cspnet.models import create_model

    for name in names:
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
                        calibration_data=args.calibration_data, images=args.images, weights=args.weights,
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
    for flag in ("images", "weights"):
        if getattr(args, flag) is not None and not os.path.exists(getattr(args, flag)):
            raise FileNotFoundError(f"--{flag} {getattr(args, flag)}: not found")
    _check_models(args.models, overrides)
    check_backends_installed(list(dict.fromkeys(args.backend)))
    if "bf16" in args.precision:
        warn_if_bf16_is_emulated()
    specs, skipped = _plan(args, overrides)
    if not specs:
        raise ValueError(f"nothing to measure: {'; '.join(skipped)}")
    from cspnet.models import get_model_entry

    detectors = any(get_model_entry(spec.model).task == "detection" for spec in specs)
    for line in table_header(detectors):
        print(line, flush=True)
    results = []
    for spec in specs:  # one table, a row as soon as it is measured
        results.append(measure_isolated(spec))
        print(table_row(results[-1], detectors), flush=True)
    if skipped:
        print(f"skipped: {'; '.join(skipped)}", file=sys.stderr)
    if args.output:
        atomic_write_text(args.output, "\n".join([*table_header(detectors), *(table_row(r, detectors) for r in results)])
                          + "\n")
    return 0
