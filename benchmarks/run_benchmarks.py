"""Produce ``docs/benchmarks.md``: CPU inference targets, the DenseNet-201 / CSPDenseNet-201 pair, memory.

    .venv/bin/python benchmarks/run_benchmarks.py              # measure every section, then render
    .venv/bin/python benchmarks/run_benchmarks.py --only pair  # re-measure one section
    .venv/bin/python benchmarks/run_benchmarks.py --render     # rebuild the doc from results/*.json

Sections (each measurement in a fresh process, see ``cspnet.cli.benchmark``):

* ``roofline``: what this CPU can do at all: fp32 and bf16 matrix-multiply throughput (GFLOP/s),
  against the arithmetic rate each throughput target needs.
* ``targets``: densenet121 @224 and cspdarknet53 @256, batch 16, against timm's eager figures on
  this machine: eager as built (contiguous), eager channels-last, ``optimize_for_inference`` with
  glibc's default allocator and with ``tune_cpu_allocator``, then ``torch.compile``, bf16, bf16 +
  compile. Each eager/optimized row is the median of ``REPEATS`` fresh processes.
* ``pair``: densenet201 vs cspdensenet201 @224, batch 16 inference (optimized, fp32 and bf16) and
  training, with their MACs and CIO from ``cspnet.profiling``, plus the CSP layout variants
  (``fusion``, ``partial_ratio``) that trade more of the dense path away.
* ``memory``: ``benchmarks/memory_efficient.py`` (training peak memory at batch 32, memory_efficient
  off/on); run separately, only rendered here.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import torch

from cspnet.cli.benchmark import BenchSpec, describe_setup, markdown_table, measure_isolated

HERE = Path(__file__).parent
RESULTS = HERE / "results"
DOC = HERE.parent / "docs" / "benchmarks.md"

# timm's eager models on this machine (fp32, batch 16, channels_last), as given in issue 6.
TIMM_IMG_PER_S = {"densenet121": 38.9, "cspdarknet53": 13.7}
TARGET_SPEEDUP = 1.3
TARGET_SIZES = {"densenet121": 224, "cspdarknet53": 256}
TARGET_SETUPS = (
    {"optimize": False, "channels_last": False},
    {"optimize": False, "channels_last": True},
    {"optimize": True, "channels_last": True, "tune_allocator": False},
    {"optimize": True, "channels_last": True},
    {"optimize": True, "channels_last": True, "compile": True},
    {"optimize": True, "channels_last": True, "precision": "bf16"},
    {"optimize": True, "channels_last": True, "precision": "bf16", "compile": True},
)
SECTIONS = ("roofline", "targets", "pair")
REPEATS = 3  # fresh processes per row (compiled rows: 1); the row is the run with the median img/s
PAIR = ("densenet201", "cspdensenet201")
PAIR_VARIANTS = (
    {"fusion": "fusion_first"},
    {"fusion": "fusion_last"},
    {"partial_ratio": 0.75, "fusion": "fusion_last"},
)


def machine() -> dict[str, Any]:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        cpu = next(line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        cpu = platform.processor() or "unknown"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "onednn": torch.backends.mkldnn.is_available(),
        "load_average": os.getloadavg(),
    }


def _save(section: str, results: list[dict[str, Any]]) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{section}.json").write_text(json.dumps({"machine": machine(), "results": results}, indent=1))


def _load(section: str) -> dict[str, Any] | None:
    path = RESULTS / f"{section}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _measure_repeated(spec: BenchSpec, repeats: int) -> dict[str, Any]:
    """The run with the median throughput of ``repeats`` fresh processes (all throughputs kept)."""
    runs = sorted((measure_isolated(spec) for _ in range(repeats)), key=lambda r: r["img_per_s"])
    result = runs[len(runs) // 2]
    result["runs_img_per_s"] = [round(r["img_per_s"], 2) for r in runs]
    return result


def _run(specs: list[BenchSpec], section: str, repeats: int = 1) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    for spec in specs:
        before = os.getloadavg()[0]
        # A compiled model's run costs a minute of compilation; it is measured once.
        result = _measure_repeated(spec, 1 if spec.compile else repeats)
        result["load_average"] = (before, os.getloadavg()[0])
        print(markdown_table([result]).splitlines()[-1], result["runs_img_per_s"], flush=True)
        results.append(result)
        _save(section, results)  # after every row: an interrupted run keeps what it measured
    return results


def _gemm_gflops(dtype: torch.dtype, n: int = 2048, seconds: float = 3.0) -> float:
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    for _ in range(3):
        a @ b
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    return 2 * n**3 * count / (time.perf_counter() - start) / 1e9


def measure_roofline() -> None:
    """Matrix-multiply GFLOP/s in fp32 and bf16 (best of 3), the ceiling for any convolution."""
    peaks = {name: max(_gemm_gflops(dtype) for _ in range(3)) for name, dtype in
             (("fp32", torch.float32), ("bf16", torch.bfloat16))}  # fmt: skip
    gmacs = {name: _add_costs([{"model": name, "img_size": size}])[0]["gmacs"] for name, size in TARGET_SIZES.items()}
    _save("roofline", [{"peak_gflops": peaks, "gmacs": gmacs}])
    print(peaks, gmacs)


def measure_targets() -> None:
    specs = [
        BenchSpec(model=name, img_size=size, batch_size=16, warmup=2, min_steps=3, min_seconds=2.0, **setup)
        for name, size in TARGET_SIZES.items()
        for setup in TARGET_SETUPS
    ]
    _run(specs, "targets", repeats=REPEATS)


def measure_pair(modes: tuple[str, ...] = ("inference", "train")) -> None:
    def spec(name: str, mode: str, **kwargs: Any) -> BenchSpec:
        return BenchSpec(model=name, img_size=224, batch_size=16, mode=mode, warmup=1, min_steps=3,
                         min_seconds=0.0, **kwargs)  # fmt: skip

    specs = [spec(name, mode) for name in PAIR for mode in modes]
    if "inference" in modes:
        specs += [spec(name, "inference", precision="bf16") for name in PAIR]
    specs += [spec(PAIR[1], mode, overrides=dict(variant)) for variant in PAIR_VARIANTS for mode in modes]
    previous = (_load("pair") or {"results": []})["results"]
    fresh = _add_costs(_run(specs, "pair", repeats=REPEATS))
    # Re-measuring some modes (--pair-modes train) keeps the other rows, in their order.
    by_key = {_row_key(r): r for r in fresh}
    merged = [by_key.pop(_row_key(r), r) for r in previous]
    _save("pair", merged + list(by_key.values()))


def _row_key(result: dict[str, Any]) -> tuple[str, str, str, str]:
    return result["model"], result["mode"], result["precision"], _variant(result)


def _add_costs(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """MACs and CIO per image from cspnet.profiling (as built, and the MACs left after
    ``optimize_for_inference``), added to each result that lacks them."""
    from cspnet import create_model
    from cspnet.export import optimize_for_inference
    from cspnet.profiling import profile

    for r in results:
        if "optimized_gmacs" not in r:
            model = create_model(r["model"], **r.get("overrides", {}))
            p = profile(model, r["img_size"])
            r["gmacs"], r["cio_m"] = p.macs / 1e9, p.cio / 1e6
            r["optimized_gmacs"] = profile(optimize_for_inference(model), r["img_size"]).macs / 1e9
    return results


def _machine_line(data: dict[str, Any]) -> str:
    m = data["machine"]
    return (
        f"{m['cpu']}, {m['cores']} cores, torch {m['torch']}, {m['threads']} threads, oneDNN "
        f"{'on' if m['onednn'] else 'off'}; load average when the section finished: {m['load_average'][0]:.1f}"
    )


def _loads(results: list[dict[str, Any]]) -> str:
    return ", ".join(f"{r['load_average'][0]:.1f}" for r in results if "load_average" in r)


def _variant(result: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in result.get("overrides", {}).items())


def render() -> str:
    out = ["# Benchmarks", "", "Produced by `benchmarks/run_benchmarks.py` (and `benchmarks/memory_efficient.py`); "
           "every row is one fresh process (`cspnet.cli.benchmark.measure_isolated`). Throughput = batch / median "
           "step time after warm-up; peak memory = resident-set high-water mark added by the measured steps "
           "(`VmHWM` reset through `/proc/self/clear_refs`).", ""]  # fmt: skip
    roofline = _load("roofline")
    peaks = roofline["results"][0]["peak_gflops"] if roofline else None
    if roofline:
        gmacs = roofline["results"][0]["gmacs"]
        out += ["## What this CPU can do: the arithmetic ceiling", "", f"Machine: {_machine_line(roofline)}.", "",
                f"Matrix multiply (2048^3, best of 3): **{peaks['fp32']:.0f} GFLOP/s in fp32, "
                f"{peaks['bf16']:.0f} GFLOP/s in bf16**. No convolution runs faster than that. A throughput "
                "target needs `img/s x 2 x MACs` FLOP/s:", "",
                "| model | input | GMACs (as built) | timm's quoted img/s needs | target img/s needs | "
                "target / fp32 peak |", "|---|---|---|---|---|---|"]  # fmt: skip
        for name, g in gmacs.items():
            timm = TIMM_IMG_PER_S[name]
            need = TARGET_SPEEDUP * timm * 2 * g
            out.append(f"| {name} | {TARGET_SIZES[name]} | {g:.3f} | {timm} img/s: {timm * 2 * g:.0f} GFLOP/s | "
                       f"{TARGET_SPEEDUP * timm:.1f} img/s: {need:.0f} GFLOP/s | **{need / peaks['fp32']:.2f}x** |")
        out.append("")
    targets = _load("targets")
    if targets:
        _add_costs(targets["results"])
        out += ["## CPU inference targets (batch 16)", "", f"Machine: {_machine_line(targets)}.", "",
                "| model | input | precision | setup | img/s | runs | vs timm eager | target (1.3x timm) | "
                "GFLOP/s done | of peak |", "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in targets["results"]:
            timm = TIMM_IMG_PER_S[r["model"]]
            ok = "**met**" if r["img_per_s"] >= TARGET_SPEEDUP * timm else f"missed by {TARGET_SPEEDUP * timm - r['img_per_s']:.1f}"
            done = r["img_per_s"] * 2 * (r["optimized_gmacs"] if r["optimize"] else r["gmacs"])
            of_peak = f"{done / peaks[r['precision']]:.0%}" if peaks else "-"
            runs = ", ".join(f"{v:.1f}" for v in r.get("runs_img_per_s", []))
            out.append(f"| {r['model']} | {r['img_size']} | {r['precision']} | {describe_setup(r)} | "
                       f"{r['img_per_s']:.1f} | {runs} | {r['img_per_s'] / timm:.2f}x ({timm}) | {ok} | "
                       f"{done:.0f} | {of_peak} |")  # fmt: skip
        out += ["", f"1-minute load average before each row: {_loads(targets['results'])}.", ""]
    pair = _load("pair")
    if pair:
        _add_costs(pair["results"])
        rows = {(r["model"], r["mode"], r["precision"], _variant(r)): r for r in pair["results"]}
        base, csp = PAIR
        out += ["## DenseNet-201 vs CSPDenseNet-201 (224x224, batch 16, channels-last)", "",
                f"Machine: {_machine_line(pair)}.", "", markdown_table(pair["results"]), "",
                f"Ratios against {base} (inference: `optimize_for_inference`; training: fp32, plain):", "",
                "| model | GMACs as built | GMACs optimized | CIO | inference fp32 | inference bf16 | training img/s | "
                "training peak memory |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip

        def ratio(key: tuple[str, str, str, str], ref: tuple[str, str, str, str], field: str) -> str:
            if key in rows and ref in rows:
                return f"{rows[key][field] / rows[ref][field]:.2f}x"
            return "-"

        for r in pair["results"]:
            if r["model"] == base or r["mode"] != "inference" or r["precision"] != "fp32":
                continue
            v = _variant(r)
            name = f"{r['model']}" + (f" ({v})" if v else "")
            ref = rows[base, "inference", "fp32", ""]
            out.append(
                f"| {name} | {r['gmacs'] / ref['gmacs']:.2f}x | {r['optimized_gmacs'] / ref['optimized_gmacs']:.2f}x | "
                f"{r['cio_m'] / ref['cio_m']:.2f}x | **{ratio((csp, 'inference', 'fp32', v), (base, 'inference', 'fp32', ''), 'img_per_s')}** | "
                f"{ratio((csp, 'inference', 'bf16', v), (base, 'inference', 'bf16', ''), 'img_per_s')} | "
                f"{ratio((csp, 'train', 'fp32', v), (base, 'train', 'fp32', ''), 'img_per_s')} | "
                f"**{ratio((csp, 'train', 'fp32', v), (base, 'train', 'fp32', ''), 'peak_mib')}** |"
            )  # fmt: skip
        out += ["", "The paper's claim as the issue states it: inference >= 1.10x, training peak memory <= 0.85x.", "",
                f"1-minute load average before each row: {_loads(pair['results'])}.", ""]  # fmt: skip
    memory_path = RESULTS / "memory_efficient.json"
    if memory_path.exists():
        memory = json.loads(memory_path.read_text())
        out += ["## Training peak memory with `memory_efficient` (224x224, batch 32, fp32)", "",
                markdown_table(memory), ""]  # fmt: skip
        by = {(r["model"], r["overrides"]["memory_efficient"]): r["peak_mib"] for r in memory}
        for name in sorted({r["model"] for r in memory}):
            if (name, False) in by and (name, True) in by:
                cut = 1 - by[name, True] / by[name, False]
                out.append(f"- {name}: {by[name, False]:.0f} -> {by[name, True]:.0f} MiB, **{cut:.0%} less** (target: >= 40%)")
        out.append("")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=SECTIONS, action="append")
    parser.add_argument("--render", action="store_true", help="only rebuild the doc from results/*.json")
    parser.add_argument("--pair-modes", nargs="+", choices=("inference", "train"), default=["inference", "train"])
    args = parser.parse_args()
    if not args.render:
        for section in args.only or SECTIONS:
            if section == "roofline":
                measure_roofline()
            elif section == "targets":
                measure_targets()
            else:
                measure_pair(tuple(args.pair_modes))
    DOC.parent.mkdir(exist_ok=True)
    generated = render()
    notes = HERE / "notes.md"  # hand-written analysis appended to the generated tables
    DOC.write_text(generated + ("\n" + notes.read_text() if notes.exists() else ""))
    # The engines section has its own script (benchmarks/engines.py); rebuild it from its results.
    if (RESULTS / "engines.json").exists():
        import engines

        engines.write_doc(engines.render(json.loads((RESULTS / "engines.json").read_text())))
    print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
