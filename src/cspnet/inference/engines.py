"""The three engines behind :class:`~cspnet.inference.InferenceModel`: PyTorch, ONNX Runtime, OpenVINO.

Each takes one input batch (a CPU tensor) and returns every graph output as float32 tensors. They
are configured the way their authors recommend for CPU inference:

* **torch**: :func:`cspnet.export.optimize_for_inference` (conv/BN folded, pools before 1x1 convs,
  channels-last, optional bf16 weights) under ``torch.inference_mode``.
* **onnxruntime**: ``SessionOptions`` with every graph optimisation (``ORT_ENABLE_ALL``: constant
  folding, conv+activation fusion, NCHWc layout transformation), sequential execution (a CNN is a
  chain: parallelism is inside each op), one intra-op thread per physical core, and, like
  ``OMP_WAIT_POLICY=PASSIVE`` for torch, no spinning of idle worker threads unless the user asked
  for active waiting.
* **openvino**: ``Core().compile_model`` on the CPU with a performance hint (``LATENCY`` for batch
  1: one stream using every core; ``THROUGHPUT``: several streams, fed by an ``AsyncInferQueue``
  with the batch split between them), one thread per physical core, and ``f32`` inference
  precision unless bf16 is asked for (OpenVINO otherwise picks bf16 by itself on AMX CPUs).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from cspnet.cpu import physical_cores
from cspnet.precision import BACKENDS

log = logging.getLogger(__name__)

BACKEND_EXTRAS = {"onnxruntime": "onnxruntime", "openvino": "openvino"}  # the pip package / cspnet extra


MESSAGE_LIMIT = 300  # characters of an engine's own error text kept in a one-line message


def engine_message(exc: BaseException) -> str:
    """An engine's error text as one short line (they span lines and repeat the file's path).

    >>> engine_message(RuntimeError("Exception from src/core:\\n  cannot   read"))
    'Exception from src/core: cannot read'
    """
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= MESSAGE_LIMIT else text[: MESSAGE_LIMIT - 3] + "..."


class BackendNotInstalledError(ImportError):
    """The engine a backend needs is not installed; the message names the pip extra."""


def import_backend(backend: str) -> Any:
    """The engine's Python module, or :class:`BackendNotInstalledError` naming what to install.

    >>> import_backend("onnxruntime").__name__
    'onnxruntime'
    """
    if backend not in BACKEND_EXTRAS:
        raise ValueError(f"backend {backend!r} is invalid: expected one of {', '.join(BACKENDS)}")
    try:
        if backend == "onnxruntime":
            import onnxruntime

            return onnxruntime
        import openvino

        return openvino
    except ImportError as exc:
        extra = BACKEND_EXTRAS[backend]
        raise BackendNotInstalledError(
            f"backend {backend!r} needs the {extra} package, which is not installed: pip install \"cspnet[{extra}]\""
        ) from exc


class TorchEngine:
    """A PyTorch module (folded for inference, or a loaded TorchScript archive) on the CPU."""

    backend = "torch"

    def __init__(self, module: Callable[[Tensor], Any], dtype: torch.dtype = torch.float32, *,
                 channels_last: bool = True, threads: int | None = None) -> None:  # fmt: skip
        self.module, self.dtype, self.channels_last = module, dtype, channels_last
        if threads:
            torch.set_num_threads(threads)
        self.threads = torch.get_num_threads()
        self.setup = "optimized, channels_last" if channels_last else "torchscript"

    @classmethod
    def from_model(cls, model: nn.Module, dtype: torch.dtype = torch.float32, threads: int | None = None) -> TorchEngine:
        from cspnet.export import optimize_for_inference

        return cls(optimize_for_inference(model, dtype=dtype), dtype, threads=threads)

    def run(self, batch: Tensor) -> list[Tensor]:
        if batch.is_floating_point():
            batch = batch.to(self.dtype)
            if self.channels_last and batch.dim() == 4:
                batch = batch.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            out = self.module(batch)
        outputs = list(out) if isinstance(out, (tuple, list)) else [out]
        return [o.float() for o in outputs]


def onnxruntime_session_options(threads: int | None = None, profile_prefix: str | None = None) -> Any:
    """The ``SessionOptions`` this project runs ONNX models with (see the module docstring)."""
    ort = import_backend("onnxruntime")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads or physical_cores()
    options.inter_op_num_threads = 1
    if os.environ.get("OMP_WAIT_POLICY", "PASSIVE").upper() == "PASSIVE":
        # Spinning workers starve each other as soon as another process shares the cores.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return options


class OnnxRuntimeEngine:
    """An ONNX file in an ``onnxruntime.InferenceSession`` on the CPU execution provider."""

    backend = "onnxruntime"

    def __init__(self, path: str | os.PathLike[str], *, threads: int | None = None,
                 profile_prefix: str | None = None) -> None:  # fmt: skip
        ort = import_backend("onnxruntime")
        options = onnxruntime_session_options(threads, profile_prefix)
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime's own error types (Fail, InvalidGraph, ...) for a file it refuses
            raise ValueError(f"{path}: onnxruntime cannot load it: {engine_message(exc)}") from exc
        self.input_name = self.session.get_inputs()[0].name
        self.threads = options.intra_op_num_threads
        self.setup = f"ORT_ENABLE_ALL, sequential, {self.threads} threads"

    def run(self, batch: Tensor) -> list[Tensor]:
        outputs = self.session.run(None, {self.input_name: batch.contiguous().numpy()})
        return [torch.from_numpy(o).float() for o in outputs]

    def end_profiling(self) -> str:
        """Stop profiling; the path of the JSON trace (per-op times), as onnxruntime writes it."""
        return str(self.session.end_profiling())


class OpenVinoEngine:
    """An ONNX file compiled by OpenVINO for the CPU."""

    backend = "openvino"

    def __init__(self, path: str | os.PathLike[str], *, batch_size: int = 1, threads: int | None = None,
                 precision: str = "fp32") -> None:  # fmt: skip
        ov = import_backend("openvino")
        import openvino.properties as props
        import openvino.properties.hint as hints

        core = ov.Core()
        self.threads = threads or physical_cores()
        mode = hints.PerformanceMode.LATENCY if batch_size == 1 else hints.PerformanceMode.THROUGHPUT
        config: dict[Any, Any] = {
            hints.performance_mode: mode,
            props.inference_num_threads: self.threads,
            # int8 files run their int8 ops in int8 either way; the rest stays f32 unless bf16 is asked for.
            hints.inference_precision: ov.Type.bf16 if precision == "bf16" else ov.Type.f32,
        }
        try:
            self.compiled = core.compile_model(core.read_model(str(Path(path))), "CPU", config)
        except Exception as exc:  # OpenVINO reports a file it refuses as a RuntimeError (or its own types)
            raise ValueError(f"{path}: OpenVINO cannot load it: {engine_message(exc)}") from exc
        self.performance_hint = "LATENCY" if batch_size == 1 else "THROUGHPUT"
        self.streams = 1
        if self.performance_hint == "THROUGHPUT":
            self.streams = max(1, int(self.compiled.get_property(props.optimal_number_of_infer_requests)))
        self.request = self.compiled.create_infer_request()
        self.queue = ov.AsyncInferQueue(self.compiled, self.streams) if self.streams > 1 else None
        self.num_outputs = len(self.compiled.outputs)
        self.setup = f"{self.performance_hint} hint, {self.streams} stream(s), {self.threads} threads"

    def run(self, batch: Tensor) -> list[Tensor]:
        data = batch.contiguous().numpy()
        if self.queue is None or len(data) < 2:
            self.request.infer({0: data})
            return [torch.from_numpy(self.request.get_output_tensor(i).data.copy()).float()
                    for i in range(self.num_outputs)]  # fmt: skip
        # THROUGHPUT: each stream runs a slice of the batch on its own cores, all at once.
        chunks = [c for c in torch.from_numpy(data).tensor_split(min(self.streams, len(data))) if len(c)]
        results: list[list[Tensor]] = [[] for _ in chunks]

        def done(request: Any, index: int) -> None:
            results[index] = [torch.from_numpy(request.get_output_tensor(i).data.copy())
                              for i in range(self.num_outputs)]  # fmt: skip

        queue = self.queue
        queue.set_callback(done)
        for index, chunk in enumerate(chunks):
            queue.start_async({0: chunk.numpy()}, index)
        queue.wait_all()
        return [torch.cat([r[i] for r in results]).float() for i in range(self.num_outputs)]
