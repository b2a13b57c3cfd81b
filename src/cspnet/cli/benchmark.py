"""``cspnet benchmark``: inference / training throughput, latency and peak memory, as a table.

Examples::

    cspnet benchmark densenet121 cspdarknet53 --batch-size 16 --channels-last
    cspnet benchmark densenet201 cspdensenet201 --mode both --img-size 224 --output results.md
    cspnet benchmark cspdensenet201 --mode train --set memory_efficient=True --batch-size 32

Every (model, mode) is measured in a fresh Python process: the peak memory of one run cannot leak into
the next, and allocator caches start empty. Peak memory is the process's resident-set high-water mark
(``VmHWM``, reset through ``/proc/self/clear_refs`` once the model, inputs and optimizer exist) minus
the resident set at that moment: the memory the forward (and backward/step) passes add on top of the
model. Where the reset is unavailable, ``ru_maxrss`` is used instead (an upper bound).

Throughput is ``batch / median step time`` after warm-up steps; latency is the median time of one
batch. Inference runs under ``torch.inference_mode``; with ``--optimize`` (default) the model goes
through :func:`cspnet.export.optimize_for_inference` (conv/BN folded, pools moved before 1x1 convs,
weights cast to ``--precision``) first; ``--jit`` further traces and freezes it (``torch.jit.freeze`` +
``torch.jit.optimize_for_inference``) and ``--compile`` runs it through ``torch.compile`` (inductor,
with weight freezing for inference). A training step is forward, cross-entropy, backward and an SGD
(momentum 0.9) update, under autocast for bf16/fp16. For inference the worker process tunes the
allocator as ``cspnet predict`` does (:func:`cspnet.runtime.tune_cpu_allocator`) unless
``--default-malloc``; training keeps glibc's defaults, as ``cspnet train`` does.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from cspnet.cli.options import add_config_overrides, parse_overrides

PRECISIONS = ("fp32", "bf16", "fp16")
MODES = ("inference", "train")


@dataclass(frozen=True)
class BenchSpec:
    """One measurement: a model in one mode at one batch size, precision and memory format."""

    model: str
    mode: str = "inference"
    batch_size: int = 16
    img_size: int | None = None  # None: the model's registered input size
    precision: str = "fp32"
    channels_last: bool = True
    optimize: bool = True
    jit: bool = False
    compile: bool = False
    overrides: dict[str, Any] = field(default_factory=dict)
    min_steps: int = 3
    min_seconds: float = 3.0
    warmup: int = 2
    threads: int | None = None
    tune_allocator: bool = True


# --- peak memory -----------------------------------------------------------------------------------


def _status_bytes(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status_bytes("VmHWM") is not None
    except OSError:
        return False


class PeakMemory:
    """Resident memory added between ``start()`` and ``stop()`` at its highest point, in bytes."""

    def start(self) -> None:
        import gc
        import resource

        gc.collect()
        self.exact = _reset_peak_rss()
        self.base = _status_bytes("VmRSS") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def stop(self) -> int:
        import resource

        peak = _status_bytes("VmHWM") if self.exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return max(0, int(peak or 0) - self.base)


# --- one measurement, in this process ----------------------------------------------------------------


def _timed_steps(step: Any, spec: BenchSpec) -> list[float]:
    for _ in range(spec.warmup):
        step()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < spec.min_steps or time.perf_counter() - start < spec.min_seconds:
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return times


def measure(spec: BenchSpec) -> dict[str, Any]:
    """Run ``spec`` in this process and return its numbers (see :func:`measure_isolated`)."""
    import torch

    from cspnet import create_model, get_model_entry
    from cspnet.export import optimize_for_inference
    from cspnet.runtime import tune_cpu_allocator

    if spec.tune_allocator and spec.mode == "inference":
        tune_cpu_allocator()
    if spec.threads:
        torch.set_num_threads(spec.threads)
    if spec.mode not in MODES:
        raise ValueError(f"mode {spec.mode!r} is invalid: expected one of {', '.join(MODES)}")
    if spec.precision not in PRECISIONS:
        raise ValueError(f"precision {spec.precision!r} is invalid: expected one of {', '.join(PRECISIONS)}")
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[spec.precision]
    img = spec.img_size or get_model_entry(spec.model).input_size[-1]
    torch.manual_seed(0)
    model = create_model(spec.model, **spec.overrides)
    memory_format = torch.channels_last if spec.channels_last else torch.contiguous_format
    x = torch.randn(spec.batch_size, 3, img, img).to(memory_format=memory_format)
    memory = PeakMemory()

    if spec.mode == "inference":
        # Casting the weights is faster than autocast for inference.
        if spec.optimize:
            model = optimize_for_inference(model, channels_last=spec.channels_last, dtype=dtype)
        else:
            model = model.eval().to(dtype=dtype, memory_format=memory_format)
        x = x.to(dtype)
        with torch.inference_mode():
            if spec.jit:
                import warnings

                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    model = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(model, x)))
        if spec.compile:  # freezing: weights become constants that inductor may pre-pack
            model = torch.compile(model, options={"freezing": True})
        memory.start()
        with torch.inference_mode():
            times = _timed_steps(lambda: model(x), spec)
    else:
        model = model.train().to(memory_format=memory_format)
        runner = torch.compile(model) if spec.compile else model
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        target = torch.randint(0, 1000, (spec.batch_size,))
        loss_fn = torch.nn.CrossEntropyLoss()

        def train_step() -> None:
            with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
                loss = loss_fn(runner(x), target)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        memory.start()
        times = _timed_steps(train_step, spec)
    median = statistics.median(times)
    return {
        **asdict(spec),
        "img_size": img,
        "threads": torch.get_num_threads(),
        "steps": len(times),
        "img_per_s": spec.batch_size / median,
        "latency_ms": median * 1e3,
        "peak_mib": memory.stop() / 2**20,
        "peak_exact": memory.exact,
    }


def _worker() -> None:
    spec = BenchSpec(**json.loads(sys.stdin.read()))
    print("BENCH-RESULT " + json.dumps(measure(spec)), flush=True)


def measure_isolated(spec: BenchSpec, timeout: float | None = None) -> dict[str, Any]:
    """Run ``spec`` in a fresh Python process and return its numbers.

    Keys: the spec's fields plus ``img_per_s``, ``latency_ms`` (median batch time), ``peak_mib``
    (memory added by the steps, see the module docstring), ``steps`` and ``threads``.
    """
    code = "from cspnet.cli.benchmark import _worker; _worker()"
    proc = subprocess.run(
        [sys.executable, "-c", code], input=json.dumps(asdict(spec)), capture_output=True, text=True,
        timeout=timeout, env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )  # fmt: skip
    for line in proc.stdout.splitlines():
        if line.startswith("BENCH-RESULT "):
            return json.loads(line.removeprefix("BENCH-RESULT "))
    last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    raise RuntimeError(f"benchmark of {spec.model} ({spec.mode}) failed: {last}")


# --- tables ---------------------------------------------------------------------------------------

COLUMNS = (
    ("model", "{model}"),
    ("mode", "{mode}"),
    ("batch", "{batch_size}"),
    ("input", "{img_size}"),
    ("precision", "{precision}"),
    ("setup", "{setup}"),
    ("img/s", "{img_per_s:.1f}"),
    ("latency (ms/batch)", "{latency_ms:.0f}"),
    ("peak memory (MiB)", "{peak_mib:.0f}"),
)


def describe_setup(result: dict[str, Any]) -> str:
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


def markdown_table(results: list[dict[str, Any]]) -> str:
    """Results as a GitHub-flavoured markdown table."""
    lines = ["| " + " | ".join(c for c, _ in COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    for r in results:
        row = {**r, "setup": describe_setup(r)}
        lines.append("| " + " | ".join(fmt.format(**row) for _, fmt in COLUMNS) + " |")
    return "\n".join(lines)


# --- CLI ------------------------------------------------------------------------------------------


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "benchmark",
        help="inference / training throughput, latency and peak memory",
        description="Measure img/s, batch latency and peak memory, each (model, mode) in a fresh process.",
    )
    p.add_argument("models", nargs="+", metavar="MODEL", help="registered model names")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--img-size", type=int, default=None, metavar="N", help="default: each model's registered size")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="bf16/fp16: weights cast for inference, autocast for training")
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
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--seconds", type=float, default=3.0, help="minimum timed seconds per measurement")
    p.add_argument("--output", metavar="FILE.md", help="also write the table (markdown) to this file")
    p.set_defaults(func=run)  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from cspnet import create_model

    if args.batch_size < 1:
        raise ValueError(f"--batch-size {args.batch_size} is invalid: expected a positive integer")
    overrides = parse_overrides(args.overrides)
    import torch

    from cspnet.models.registry import require_classifier

    for name in args.models:  # fail fast, in this process, on unknown names and bad overrides
        require_classifier(name, "cspnet benchmark")
        with torch.device("meta"):
            create_model(name, **overrides)
    modes = MODES if args.mode == "both" else (args.mode,)
    results = []
    for name in args.models:
        for mode in modes:
            spec = BenchSpec(
                model=name, mode=mode, batch_size=args.batch_size, img_size=args.img_size,
                precision=args.precision, channels_last=args.channels_last, optimize=args.optimize,
                jit=args.jit, compile=args.compile, overrides=overrides, min_seconds=args.seconds,
                threads=args.threads, tune_allocator=not args.default_malloc,
            )  # fmt: skip
            results.append(measure_isolated(spec))
            print(markdown_table(results[-1:]).splitlines()[-1], flush=True)
    table = markdown_table(results)
    print()
    print(table)
    if args.output:
        with open(args.output, "w") as f:
            f.write(table + "\n")
    return 0
