"""Inference engines against the project's torch path: ``docs/benchmarks.md``, section "Inference engines".

    .venv/bin/python benchmarks/engines.py            # export, measure, profile, render (~10 min on 2 cores)
    .venv/bin/python benchmarks/engines.py --render   # rebuild the section from results/engines.json

For densenet121 @224, cspdensenet121 @224 and cspdarknet53 @256 (random weights: speed does not
depend on them), at batch 16 and batch 1, through the project's own interface
(:func:`cspnet.inference.load_model`, one fresh process per row, :mod:`cspnet.inference.benchmark`):

* ``torch fp32``: the project's eager path (``optimize_for_inference``, channels-last), the reference;
* ``onnxruntime fp32`` / ``openvino fp32``: the file ``cspnet export`` writes (folded, opset 18);
* ``onnxruntime int8`` / ``openvino int8``: that file quantised by ``cspnet export --int8``
  (QDQ, per-channel, calibrated on 32 digits images: speed does not depend on which).

Each model is exported once (fp32 and int8) and every engine row loads the files, as a deploying
user would. Rows of one model and batch run back to back, so the ratios compare like with like
even when the machine's load drifts; the 1-minute load average is recorded before each row.
``--profile`` also writes onnxruntime's per-op profile (``SessionOptions.enable_profiling``) of
every engine-model pair at batch 16, summed by op type.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

import cspnet
from cspnet.cli.benchmark import describe_setup
from cspnet.export import export_model
from cspnet.inference.benchmark import BenchSpec, measure_isolated

HERE = Path(__file__).parent
RESULTS = HERE / "results" / "engines.json"
DOC = HERE.parent / "docs" / "benchmarks.md"
NOTES = HERE / "engines_notes.md"  # hand-written analysis, appended to the generated tables
BEGIN, END = "<!-- engines:begin (benchmarks/engines.py) -->", "<!-- engines:end -->"

MODELS = {"densenet121": 224, "cspdensenet121": 224, "cspdarknet53": 256}
BATCHES = (16,)
ROWS = (("torch", "fp32"), ("onnxruntime", "fp32"), ("openvino", "fp32"), ("torch", "bf16"), ("openvino", "bf16"),
        ("onnxruntime", "int8"), ("openvino", "int8"))  # fmt: skip
FP32_ROWS = tuple(f"{b} {p}" for b, p in ROWS if p == "fp32")
INT8_ROWS = tuple(f"{b} {p}" for b, p in ROWS if p == "int8")
CALIBRATION_IMAGES = 32
TARGET_INT8 = 3.0  # issue 19: the best int8 path >= 3x the best fp32 path, batch 16


def machine() -> dict[str, Any]:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    fields = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
    flags = fields.get("Flags", "").split()
    import onnxruntime
    import openvino

    return {
        "cpu": fields.get("Model name", platform.processor()).strip(),
        "cores": os.cpu_count(),
        "simd_flags": [f for f in flags if re.match(r"(avx|amx|fma|vnni)", f)],
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "openvino": openvino.__version__.split("-")[0],
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def export_files(name: str, img: int, folder: Path) -> dict[str, Any]:
    """The fp32 file ``cspnet export`` writes and its int8 version for each engine (``quantize_int8(engine=)``)."""
    from cspnet.export.quantize import quantize_int8
    from cspnet.metadata import read_onnx_info

    torch.manual_seed(0)
    model = cspnet.create_model(name)
    fp32 = export_model(model, "onnx", folder / f"{name}.onnx", img)
    files: dict[str, Any] = {"fp32": str(fp32.path), "fp32_mib": fp32.file_bytes / 2**20, "fp32_rel_diff": fp32.max_rel_diff}
    for engine in ("onnxruntime", "openvino"):
        int8 = quantize_int8(fp32.path, folder / f"{name}_int8_{engine}.onnx", read_onnx_info(fp32.path), "digits",
                             count=CALIBRATION_IMAGES, engine=engine)  # fmt: skip
        files[f"{engine} int8"] = str(int8)
    files["int8_mib"] = Path(files["openvino int8"]).stat().st_size / 2**20
    return files


def measure_all(seconds: float, folder: Path, batches: tuple[int, ...] = BATCHES) -> list[dict[str, Any]]:
    results = []
    for name, img in MODELS.items():
        t = time.time()
        files = export_files(name, img, folder)
        print(f"{name}: exported fp32 {files['fp32_mib']:.1f} MiB, int8 {files['int8_mib']:.1f} MiB "
              f"({time.time() - t:.0f} s)", flush=True)  # fmt: skip
        for batch in batches:
            for backend, precision in ROWS:
                source = None if backend == "torch" else files[f"{backend} int8" if precision == "int8" else "fp32"]
                spec = BenchSpec(
                    model=name, batch_size=batch, img_size=img, precision=precision, backend=backend,
                    source=source, min_steps=3 if batch > 1 else 10,
                    min_seconds=seconds, warmup=2, calibration_images=CALIBRATION_IMAGES,
                )  # fmt: skip
                load = os.getloadavg()[0]
                row = {**measure_isolated(spec), "load_before": load, **{k: v for k, v in files.items() if "mib" in k}}
                results.append(row)
                print(f"  b{batch} {backend} {precision}: {row['img_per_s']:.1f} img/s, {row['latency_ms']:.0f} ms "
                      f"(load {load:.1f})", flush=True)  # fmt: skip
    return results


def digits_accuracy(checkpoint: Path) -> dict[str, float]:
    """Top-1 (%) on the held-out digits of a ``cspnet train`` digits checkpoint: fp32, and int8 quantised
    for each engine on 128 training digits (what ``load_model(..., precision="int8")`` does)."""
    from cspnet.data import load_digits_split
    from cspnet.inference import load_model

    fp32 = load_model(checkpoint)
    _, val = load_digits_split(fp32.info.img_size)

    def top1(model: Any) -> float:
        return 100 * float((model(model.preprocess(val.images)).argmax(1) == val.targets).float().mean())

    out = {"torch fp32": top1(fp32), "images": len(val.targets)}
    for engine in ("onnxruntime", "openvino"):
        out[f"{engine} int8"] = top1(load_model(checkpoint, engine, precision="int8", calibration_data="digits",
                                                calibration_images=128))  # fmt: skip
    return out


def profile_ops(folder: Path, steps: int = 3) -> dict[str, dict[str, float]]:
    """onnxruntime's own profile: ms per batch of 16 spent in each op type, per model and precision."""
    out: dict[str, dict[str, float]] = {}
    for name, img in MODELS.items():
        for precision in ("fp32", "int8"):
            path = folder / (f"{name}.onnx" if precision == "fp32" else f"{name}_int8_onnxruntime.onnx")
            from cspnet.inference.engines import OnnxRuntimeEngine

            engine = OnnxRuntimeEngine(path, profile_prefix=str(folder / f"profile_{name}_{precision}"))
            x = torch.randn(16, 3, img, img)
            engine.run(x)  # warm-up
            for _ in range(steps):
                engine.run(x)
            trace = json.loads(Path(engine.end_profiling()).read_text())
            per_op: dict[str, float] = defaultdict(float)
            for event in trace:
                if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
                    per_op[event["args"]["op_name"]] += event["dur"] / 1e3 / (steps + 1)
            ranked = out[f"{name} {precision}"] = dict(sorted(per_op.items(), key=lambda kv: -kv[1]))
            print(f"profiled {name} {precision}: " + ", ".join(f"{k} {v:.0f} ms" for k, v in list(ranked.items())[:4]))
    return out


# --- rendering --------------------------------------------------------------------------------------


def _speedups(results: list[dict[str, Any]], cpu: bool = False) -> dict[tuple[str, int], dict[str, float]]:
    """Speed-up over torch fp32 of the same model and batch: by wall-clock img/s, or by CPU time per image."""
    table: dict[tuple[str, int], dict[str, float]] = defaultdict(dict)
    for r in results:
        table[(r["model"], r["batch_size"])][f"{r['backend']} {r['precision']}"] = (
            1 / r["cpu_ms_per_img"] if cpu else r["img_per_s"]
        )
    return {k: {row: v / rows["torch fp32"] for row, v in rows.items()} for k, rows in table.items()}


def _share(data: dict[str, Any], row: dict[str, Any]) -> str:
    peaks, gmacs = data.get("ceilings"), data.get("gmacs", {}).get(row["model"])
    if not peaks or not gmacs:
        return "-"
    peak = max(v for k, v in peaks.items() if k.endswith(row["precision"]))
    return f"{100 * 2 * gmacs * row['img_per_s'] / peak:.0f} %"


def render(data: dict[str, Any]) -> str:
    m, results = data["machine"], data["results"]
    lines = [
        BEGIN,
        "## Inference engines: onnxruntime, OpenVINO, int8 (CPU)",
        "",
        f"Produced by `benchmarks/engines.py` on {m['date']}. Machine: {m['cpu']}, {m['cores']} cores "
        f"(`lscpu` SIMD flags: {' '.join(m['simd_flags'])}); torch {m['torch']}, onnxruntime {m['onnxruntime']}, "
        f"OpenVINO {m['openvino']}. Other agents may share these 2 cores "
        "(1-minute load average before each row in the last column; an idle machine reads about 0.1), "
        "with few iterations per row, so single figures are noisy by 10-30 %; each ratio compares rows "
        "measured back to back in the same run. Random weights; int8 files calibrated on "
        f"{CALIBRATION_IMAGES} digits images, one per engine (`quantize_int8(engine=...)`: uint8 activations with a "
        "zero point for onnxruntime, symmetric int8 for OpenVINO). Every row goes through "
        "`cspnet.inference.load_model` in a fresh process and loads the exported files. Share of ceiling: "
        "2 x MACs x img/s against the best 2048^3 matrix multiply of the row's precision ("
        + ", ".join(f"{k} {v:.0f}" for k, v in data.get("ceilings", {}).items()) + " GFLOP/s).",
        "",
        "| model | batch | backend | precision | setup | img/s | latency (ms/batch) | vs torch fp32 | "
        "CPU ms/img | vs torch fp32 (CPU time) | peak memory (MiB) | share of ceiling | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    speed, cpu_speed = _speedups(results), _speedups(results, cpu=True)
    for r in results:
        key = (r["model"], r["batch_size"])
        row = f"{r['backend']} {r['precision']}"
        lines.append(
            f"| {r['model']} | {r['batch_size']} | {r['backend']} | {r['precision']} | {describe_setup(r)} | "
            f"{r['img_per_s']:.1f} | {r['latency_ms']:.0f} | {speed[key][row]:.2f}x | {r['cpu_ms_per_img']:.3g} | "
            f"{cpu_speed[key][row]:.2f}x | {r['peak_mib']:.0f} | {_share(data, r)} | {r['load_before']:.1f} |"
        )
    lines += ["", f"Target (issue 19): the best int8 path >= {TARGET_INT8}x the best fp32 path of the same run, batch "
              "16, by wall-clock img/s (by CPU time per image in brackets); bf16 for comparison:", "",
              "| model | best fp32 | best bf16 | best int8 | int8 / fp32 | ONNX file fp32 -> int8 |",
              "|---|---|---|---|---|---|"]  # fmt: skip
    for name in dict.fromkeys(r["model"] for r in results):
        rows = {f"{r['backend']} {r['precision']}": r for r in results if r["model"] == name and r["batch_size"] == 16}
        if not rows:
            continue

        def best(labels: tuple[str, ...], rows: dict[str, Any] = rows) -> str:
            return max((k for k in labels if k in rows), key=lambda k: rows[k]["img_per_s"])

        fp32, int8 = best(FP32_ROWS), best(INT8_ROWS)
        bf16 = best(tuple(k for k in rows if k.endswith("bf16")))
        got, cpu = rows[int8]["img_per_s"] / rows[fp32]["img_per_s"], rows[fp32]["cpu_ms_per_img"] / rows[int8]["cpu_ms_per_img"]
        verdict = f"**met** ({got:.2f}x)" if got >= TARGET_INT8 else f"missed by {TARGET_INT8 - got:.2f}x ({got:.2f}x)"
        lines.append(f"| {name} | {fp32} {rows[fp32]['img_per_s']:.1f} | {bf16} {rows[bf16]['img_per_s']:.1f} | "
                     f"{int8} {rows[int8]['img_per_s']:.1f} | {verdict} [{cpu:.2f}x] | "
                     f"{rows[fp32]['fp32_mib']:.1f} -> {rows[fp32]['int8_mib']:.1f} MiB |")  # fmt: skip
    if data.get("digits"):
        acc = data["digits"]
        lines += ["", f"Accuracy on the held-out digits ({acc['images']} images; the digits model of `cspnet train`, "
                  "cspdensenet_bc40, int8 calibrated on 128 training digits for each engine): "
                  + ", ".join(f"{k} {v:.2f} %" for k, v in acc.items() if k != "images") + "."]  # fmt: skip
    if data.get("profile"):
        lines += ["", "onnxruntime's own profile at batch 16 (ms per batch by op type, top 6; `--profile`):", "",
                  "| model | precision | ops (ms per batch) |", "|---|---|---|"]  # fmt: skip
        for key, ops in data["profile"].items():
            name, precision = key.split()
            total = sum(ops.values())
            top = ", ".join(f"{op} {ms:.0f} ({100 * ms / total:.0f} %)" for op, ms in list(ops.items())[:6])
            lines.append(f"| {name} | {precision} | total {total:.0f}: {top} |")
    if NOTES.exists():
        lines += ["", NOTES.read_text().strip()]
    lines.append(END)
    return "\n".join(lines) + "\n"


def write_doc(section: str) -> None:
    from doc_section import write_section  # the sibling script's folder is on sys.path when run as a script

    write_section(DOC, BEGIN, END, section)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--render", action="store_true", help="only rebuild the doc section from the results")
    parser.add_argument("--profile", action="store_true", help="also profile onnxruntime's ops at batch 16")
    parser.add_argument("--seconds", type=float, default=2.0, help="minimum timed seconds per row")
    parser.add_argument("--models", nargs="+", metavar="NAME=SIZE", help="other models (a quick trial; "
                        "targets are defined for the default three only)")  # fmt: skip
    parser.add_argument("--results", type=Path, default=RESULTS, help=f"JSON file (default {RESULTS})")
    parser.add_argument("--batches", type=int, nargs="+", default=list(BATCHES), help="batch sizes (default 16)")
    parser.add_argument("--digits-checkpoint", type=Path, help="a `cspnet train` digits checkpoint: int8 accuracy")
    args = parser.parse_args()
    if args.models:
        MODELS.clear()
        MODELS.update({n: int(size) for n, size in (item.split("=") for item in args.models)})
    if not args.render:
        from detectors import ceilings

        from cspnet.profiling import profile

        with tempfile.TemporaryDirectory(prefix="cspnet-engines-") as tmp:
            data = {"machine": machine(), "ceilings": ceilings(Path(tmp)),
                    "gmacs": {n: profile(n, size).macs / 1e9 for n, size in MODELS.items()}}  # fmt: skip
            if args.digits_checkpoint:
                data["digits"] = digits_accuracy(args.digits_checkpoint)
                print("digits top-1:", data["digits"], flush=True)
            data["results"] = measure_all(args.seconds, Path(tmp), tuple(args.batches))
            if args.profile:
                data["profile"] = profile_ops(Path(tmp))
        data["machine"]["load_after"] = os.getloadavg()[0]
        args.results.parent.mkdir(exist_ok=True)
        args.results.write_text(json.dumps(data, indent=1) + "\n")
    if args.results == RESULTS:
        write_doc(render(json.loads(RESULTS.read_text())))
    else:
        print(render(json.loads(args.results.read_text())))


if __name__ == "__main__":
    main()
