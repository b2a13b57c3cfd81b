"""Produce ``docs/benchmarks.md``: CPU inference targets, the DenseNet-201 / CSPDenseNet-201 pair, memory.

    .venv/bin/python benchmarks/run_benchmarks.py              # measure every section, then render
    .venv/bin/python benchmarks/run_benchmarks.py --only pair  # re-measure one section
    .venv/bin/python benchmarks/run_benchmarks.py --render     # rebuild the doc from results/*.json

Sections (each measurement in a fresh process, see ``cspnet.cli.benchmark``):

* ``targets``: densenet121 @224 and cspdarknet53 @256, batch 16, fp32, against timm's eager figures
  on this machine: eager as built (contiguous), eager channels-last, optimize_for_inference
  (folded + channels-last), and that traced + ``torch.jit.freeze``.
* ``pair``: densenet201 vs cspdensenet201 @224, batch 16 inference (optimized) and training, with
  their MACs and CIO from ``cspnet.profiling``.
* ``memory``: ``benchmarks/memory_efficient.py`` (training peak memory at batch 32, memory_efficient
  off/on); run separately, only rendered here.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
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
    {"optimize": True, "channels_last": True},
    {"optimize": True, "channels_last": True, "jit": True},
)
PAIR = ("densenet201", "cspdensenet201")


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


def _run(specs: list[BenchSpec], section: str) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    for spec in specs:
        before = os.getloadavg()[0]
        result = measure_isolated(spec)
        result["load_average"] = (before, os.getloadavg()[0])
        print(markdown_table([result]).splitlines()[-1], flush=True)
        results.append(result)
        _save(section, results)  # after every row: an interrupted run keeps what it measured
    return results


def measure_targets() -> None:
    specs = [
        BenchSpec(model=name, img_size=size, batch_size=16, warmup=1, min_steps=3, min_seconds=2.0, **setup)
        for name, size in TARGET_SIZES.items()
        for setup in TARGET_SETUPS
    ]
    _run(specs, "targets")


def measure_pair(modes: tuple[str, ...] = ("inference", "train")) -> None:
    specs = [
        BenchSpec(model=name, img_size=224, batch_size=16, mode=mode, warmup=1, min_steps=3, min_seconds=0.0)
        for name in PAIR
        for mode in modes
    ]
    _save("pair", _add_costs(_run(specs, "pair")))


def _add_costs(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """MACs and CIO per image from cspnet.profiling, added to each result that lacks them."""
    from cspnet.profiling import profile

    for r in results:
        if "gmacs" not in r:
            p = profile(r["model"], r["img_size"])
            r["gmacs"], r["cio_m"] = p.macs / 1e9, p.cio / 1e6
    return results


def _machine_line(data: dict[str, Any]) -> str:
    m = data["machine"]
    return (
        f"{m['cpu']}, {m['cores']} cores, torch {m['torch']}, {m['threads']} threads, oneDNN "
        f"{'on' if m['onednn'] else 'off'}; load average when the section finished: {m['load_average'][0]:.1f}"
    )


def _loads(results: list[dict[str, Any]]) -> str:
    return ", ".join(f"{r['load_average'][0]:.1f}" for r in results if "load_average" in r)


def render() -> str:
    out = ["# Benchmarks", "", "Produced by `benchmarks/run_benchmarks.py` (and `benchmarks/memory_efficient.py`); "
           "every row is one fresh process (`cspnet.cli.benchmark.measure_isolated`). Throughput = batch / median "
           "step time after warm-up; peak memory = resident-set high-water mark added by the measured steps "
           "(`VmHWM` reset through `/proc/self/clear_refs`).", ""]  # fmt: skip
    targets = _load("targets")
    if targets:
        out += ["## CPU inference targets (fp32, batch 16)", "", f"Machine: {_machine_line(targets)}.", ""]
        out += ["| model | input | setup | img/s | vs timm eager | target (1.3x timm) |", "|---|---|---|---|---|---|"]
        for r in targets["results"]:
            timm = TIMM_IMG_PER_S[r["model"]]
            ok = "met" if r["img_per_s"] >= TARGET_SPEEDUP * timm else f"missed by {TARGET_SPEEDUP * timm - r['img_per_s']:.1f} img/s"
            out.append(f"| {r['model']} | {r['img_size']} | {describe_setup(r)} | {r['img_per_s']:.1f} | "
                       f"{r['img_per_s'] / timm:.2f}x ({timm}) | {ok} |")  # fmt: skip
        out += ["", f"1-minute load average before each row: {_loads(targets['results'])}.", ""]
    pair = _load("pair")
    if pair:
        rows = {(r["model"], r["mode"]): r for r in pair["results"]}
        out += ["## DenseNet-201 vs CSPDenseNet-201 (224x224, batch 16, fp32, channels-last)", "",
                f"Machine: {_machine_line(pair)}.", "", markdown_table(pair["results"]), ""]  # fmt: skip
        base, csp = PAIR
        if all((m, "inference") in rows for m in PAIR):
            speed = rows[csp, "inference"]["img_per_s"] / rows[base, "inference"]["img_per_s"]
            out.append(f"- inference throughput ratio {csp}/{base}: **{speed:.2f}x** (paper claim: >= 1.10x)")
        if all((m, "train") in rows for m in PAIR):
            speed = rows[csp, "train"]["img_per_s"] / rows[base, "train"]["img_per_s"]
            mem = rows[csp, "train"]["peak_mib"] / rows[base, "train"]["peak_mib"]
            out.append(f"- training throughput ratio: {speed:.2f}x; training peak memory ratio at batch 16: "
                       f"**{mem:.2f}x** (claim: <= 0.85x)")  # fmt: skip
        r0, r1 = rows.get((base, "inference")), rows.get((csp, "inference"))
        if r0 and r1:
            _add_costs([r0, r1])
            out.append(f"- MACs: {r0['gmacs']:.3f} G vs {r1['gmacs']:.3f} G ({r1['gmacs'] / r0['gmacs']:.2f}x); "
                       f"CIO: {r0['cio_m']:.1f} M vs {r1['cio_m']:.1f} M ({r1['cio_m'] / r0['cio_m']:.2f}x)")  # fmt: skip
        out += ["", f"1-minute load average before each row: {_loads(pair['results'])}.", ""]
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
    parser.add_argument("--only", choices=("targets", "pair"), action="append")
    parser.add_argument("--render", action="store_true", help="only rebuild the doc from results/*.json")
    parser.add_argument("--pair-modes", nargs="+", choices=("inference", "train"), default=["inference", "train"])
    args = parser.parse_args()
    if not args.render:
        for section in args.only or ("targets", "pair"):
            if section == "targets":
                measure_targets()
            else:
                measure_pair(tuple(args.pair_modes))
    DOC.parent.mkdir(exist_ok=True)
    generated = render()
    notes = HERE / "notes.md"  # hand-written analysis appended to the generated tables
    DOC.write_text(generated + ("\n" + notes.read_text() if notes.exists() else ""))
    print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
