"""The measurement engine of ``cspnet benchmark``: throughput, latency and peak memory of one setup.

It lives with the engines it measures (it runs models through :func:`load_model`); training steps
are measured here too, with the same timer and memory probe, so that one table compares both.

Every measurement can run in a fresh Python process (:func:`measure_isolated`): the peak memory of one
run cannot leak into the next, and allocator caches start empty. Peak memory is the process's
resident-set high-water mark (``VmHWM``, reset through ``/proc/self/clear_refs`` once the model,
inputs and optimizer exist) minus the resident set at that moment: the memory the forward (and
backward/step) passes add on top of the model. Where the reset is unavailable, ``ru_maxrss`` is used
instead (an upper bound).

Throughput is ``batch / median step time`` after warm-up steps; latency is the median time of one
batch; ``cpu_ms_per_img`` is the CPU time all the process's threads spent per image over the timed
steps, which time spent waiting for a core (another process's) does not inflate. Inference rows run the way ``cspnet predict`` runs a model: :func:`cspnet.inference.load_model`
on the spec's backend (torch: :func:`cspnet.export.optimize_for_inference`, channels-last, weights in
the spec's precision; onnxruntime / openvino: the folded model exported to ONNX, int8 quantised on
``calibration_data``). Other torch setups (``optimize=False``, NCHW, ``jit``, ``compile``) build the
model here. A training step is forward, cross-entropy, backward and an SGD (momentum 0.9) update,
under autocast for bf16/fp16. Inference tunes the allocator as ``cspnet predict`` does
(:func:`cspnet.runtime.tune_cpu_allocator`) unless ``tune_allocator=False``; training keeps glibc's
defaults, as ``cspnet train`` does.

A detector's row measures the model alone (network and box decoding, what an exported file holds)
and, like ``detect()``, end to end on image files (``images``: a folder; default: synthetic
640x480 JPEGs): each batch's files decoded, letterboxed and normalised, run, post-processed (NMS,
boxes back on the image), with the median time of each stage per image (``stage_ms``). Randomly
initialised weights score most boxes high, so their NMS stage is the worst case (``max_candidates``
boxes); give trained ``weights`` for the time a trained detector's NMS takes.

>>> r = measure(BenchSpec("cspdensenet_bc40", batch_size=1, img_size=16, min_steps=1, min_seconds=0, warmup=0))
>>> r["img_per_s"] > 0, r["backend"], r["precision"]
(True, 'torch', 'fp32')
>>> d = measure(BenchSpec("cspdensenet_bc40_efm", batch_size=1, img_size=64, min_steps=1, min_seconds=0, warmup=0))
>>> d["e2e_img_per_s"] > 0, sorted(d["stage_ms"])
(True, ['decode', 'letterbox', 'model', 'postprocess'])
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from cspnet.precision import BACKENDS, PRECISIONS

MODES = ("inference", "train")  # what a row measures: a forward pass, or a training step


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
    backend: str = "torch"  # inference only: "onnxruntime" / "openvino" run an ONNX export of the model
    calibration_data: str = "digits"  # int8: images the quantisation ranges come from (speed does not depend on them)
    calibration_images: int = 32
    source: str | None = None  # inference: a file written by `cspnet export` to run instead of building `model`
    images: str | None = None  # detectors, end to end: a folder of images (default: synthetic 640x480 JPEGs)
    weights: str | None = None  # any file create_model(pretrained=...) reads; a training checkpoint is run as it is


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


@dataclass
class StepTimes:
    """Wall-clock seconds of each timed step, and the CPU seconds all the process's threads spent."""

    wall: list[float]
    cpu_seconds: float


def _timed_steps(step: Any, spec: BenchSpec) -> StepTimes:
    for _ in range(spec.warmup):
        step()
    times: list[float] = []
    cpu = time.process_time()
    start = time.perf_counter()
    while len(times) < spec.min_steps or time.perf_counter() - start < spec.min_seconds:
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return StepTimes(times, time.process_time() - cpu)


def _check(spec: BenchSpec) -> None:
    if spec.mode not in MODES:
        raise ValueError(f"mode {spec.mode!r} is invalid: expected one of {', '.join(MODES)}")
    if spec.precision not in PRECISIONS:
        raise ValueError(f"precision {spec.precision!r} is invalid: expected one of {', '.join(PRECISIONS)}")
    if spec.backend not in BACKENDS:
        raise ValueError(f"backend {spec.backend!r} is invalid: expected one of {', '.join(BACKENDS)}")
    if spec.backend != "torch" and (spec.mode != "inference" or spec.jit or spec.compile or not spec.optimize):
        raise ValueError(f"backend {spec.backend!r} measures optimized inference only (no training, jit or compile)")
    if spec.precision == "int8" and spec.backend == "torch":
        raise ValueError("int8 runs on backend 'onnxruntime' or 'openvino'")


def _uses_inference_model(spec: BenchSpec) -> bool:
    """Rows that go through :func:`cspnet.inference.load_model`, as ``cspnet predict`` runs a model."""
    if spec.backend != "torch" or spec.source:
        return True
    return spec.optimize and spec.channels_last and not spec.jit and not spec.compile and spec.precision != "fp16"


def _measure_loaded(spec: BenchSpec, img: int, memory: PeakMemory) -> dict[str, Any]:
    """A row run as ``cspnet predict`` runs a model: through :func:`load_model` (a detector end to end too)."""
    import torch

    from cspnet.inference.model import load_model
    from cspnet.trained import is_training_checkpoint

    source = spec.source or (spec.weights if spec.weights and is_training_checkpoint(spec.weights) else None)
    # A file or checkpoint brings its own size (unless one is asked for); a registered name is built here.
    built: dict[str, Any] = {"img_size": spec.img_size} if source else {
        "img_size": img, "overrides": spec.overrides, "weights": spec.weights}  # fmt: skip
    loaded = load_model(
        source or spec.model, spec.backend, precision=spec.precision, batch_size=spec.batch_size,
        threads=spec.threads, calibration_data=spec.calibration_data, calibration_images=spec.calibration_images,
        **built,
    )  # fmt: skip
    x = torch.randn(spec.batch_size, *loaded.info.input_shape)
    if spec.backend == "torch":  # the layout the folded model's weights have: no conversion per batch
        x = x.to(memory_format=torch.channels_last)
    threads = getattr(loaded.engine, "threads", None) or torch.get_num_threads()
    memory.start()
    times = _timed_steps(lambda: loaded(x), spec)
    result = _result(spec, loaded.info.img_size, times, memory, threads, getattr(loaded.engine, "setup", ""))
    if loaded.info.task == "detection":
        result.update(_end_to_end(loaded, spec))
    return result


def measure(spec: BenchSpec) -> dict[str, Any]:
    """Run ``spec`` in this process and return its numbers (see :func:`measure_isolated`)."""
    import torch

    from cspnet.export import optimize_for_inference
    from cspnet.models import create_model, get_model_entry
    from cspnet.runtime import tune_cpu_allocator

    _check(spec)
    if spec.tune_allocator and spec.mode == "inference":
        tune_cpu_allocator()
    if spec.threads:
        torch.set_num_threads(spec.threads)
    img = spec.img_size or get_model_entry(spec.model).input_size[-1]
    torch.manual_seed(0)
    memory = PeakMemory()
    threads, engine_setup = torch.get_num_threads(), ""

    if spec.mode == "inference" and _uses_inference_model(spec):
        return _measure_loaded(spec, img, memory)

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[spec.precision]
    # Any: nn.Module.to's stubs lack memory_format, and jit/compile turn the module into other callables.
    model: Any = create_model(spec.model, pretrained=spec.weights or False, **spec.overrides)
    memory_format = torch.channels_last if spec.channels_last else torch.contiguous_format
    x = torch.randn(spec.batch_size, 3, img, img).to(memory_format=memory_format)

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
    return _result(spec, img, times, memory, threads, engine_setup)


DETECTION_STAGES = ("decode", "letterbox", "model", "postprocess")
SYNTHETIC_IMAGES = 8  # 640x480 JPEGs, seeded: a camera frame's size and a photo's entropy


def _synthetic_images(folder: str) -> list[str]:
    """Seeded 640x480 JPEGs of smooth noise (a photo-like decode cost) in ``folder``."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for i in range(SYNTHETIC_IMAGES):
        coarse = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((640, 480), Image.Resampling.BICUBIC)
        paths.append(os.path.join(folder, f"synthetic{i}.jpg"))
        image.save(paths[-1], quality=90)
    return paths


def _end_to_end(model: Any, spec: BenchSpec) -> dict[str, Any]:
    """A detector run as ``detect()`` runs it, on image files: images per second and the median time of each
    stage per image (decode, letterbox + normalise, model, post-processing + boxes back on the image)."""
    import tempfile

    from cspnet.detection.sources import collect_sources
    from cspnet.inference.detection import as_image

    with tempfile.TemporaryDirectory(prefix="cspnet-bench-") as folder:
        files = ([str(s.path) for s in collect_sources([spec.images]) if s.kind == "image"] if spec.images
                 else _synthetic_images(folder))  # fmt: skip
        if not files:
            raise ValueError(f"{spec.images}: no images to measure end to end on")
        limits = model.thresholds()
        stages: dict[str, list[float]] = {name: [] for name in DETECTION_STAGES}
        position = 0

        def step() -> None:
            nonlocal position
            batch = [files[(position + i) % len(files)] for i in range(spec.batch_size)]
            position += spec.batch_size
            t0 = time.perf_counter()
            images = [as_image(path) for path in batch]
            t1 = time.perf_counter()
            letterboxed, boxes = model.letterbox(images)
            inputs = model.preprocess(letterboxed)
            t2 = time.perf_counter()
            outputs = model.outputs(inputs)
            t3 = time.perf_counter()
            for found, lb in zip(model.postprocess(outputs, tuple(letterboxed.shape), limits), boxes):
                model.on_image(found, lb)
            t4 = time.perf_counter()
            for name, start, end in zip(DETECTION_STAGES, (t0, t1, t2, t3), (t1, t2, t3, t4)):
                stages[name].append((end - start) / spec.batch_size)

        times = _timed_steps(step, spec)
    warm = spec.warmup  # the warm-up steps are timed by the stages too: leave them out
    return {
        "e2e_img_per_s": spec.batch_size / statistics.median(times.wall),
        "stage_ms": {name: 1e3 * statistics.median(values[warm:] or values) for name, values in stages.items()},
        "e2e_images": "synthetic 640x480 JPEG" if not spec.images else spec.images,
    }


def _result(
    spec: BenchSpec, img: int, times: StepTimes, memory: PeakMemory, threads: int, engine_setup: str
) -> dict[str, Any]:
    median = statistics.median(times.wall)
    return {
        **asdict(spec),
        "img_size": img,
        "threads": threads,
        "engine_setup": engine_setup,
        "steps": len(times.wall),
        "img_per_s": spec.batch_size / median,
        "latency_ms": median * 1e3,
        # CPU time is what a shared machine distorts least: waiting for a core is not counted.
        "cpu_ms_per_img": 1e3 * times.cpu_seconds / (len(times.wall) * spec.batch_size),
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
    code = "from cspnet.inference.benchmark import _worker; _worker()"
    proc = subprocess.run(
        [sys.executable, "-c", code], input=json.dumps(asdict(spec)), capture_output=True, text=True,
        timeout=timeout, env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )  # fmt: skip
    for line in proc.stdout.splitlines():
        if line.startswith("BENCH-RESULT "):
            return json.loads(line.removeprefix("BENCH-RESULT "))
    last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    raise RuntimeError(f"benchmark of {spec.model} ({spec.mode}, {spec.backend} {spec.precision}) failed: {last}")
