"""``load_model``: one way to run a model for inference, whatever it was saved as, on any engine.

>>> import torch
>>> from cspnet.inference import load_model
>>> model = load_model("cspdensenet_bc40", num_classes=3, img_size=32)
>>> model.backend, model.info.input_shape, tuple(model(torch.randn(2, 3, 32, 32)).shape)
('torch', (3, 32, 32), (2, 3))
"""

from __future__ import annotations

import logging
import os
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from cspnet.inference.engines import (
    OnnxRuntimeEngine,
    OpenVinoEngine,
    TorchEngine,
    engine_message,
    import_backend,
)
from cspnet.metadata import (
    TORCHSCRIPT_METADATA,
    ModelInfo,
    check_img_size,
    default_info,
    read_onnx_info,
    read_torchscript_info,
)
from cspnet.precision import BACKEND_PRECISIONS, BACKENDS

log = logging.getLogger(__name__)

ONNX_SUFFIXES = (".onnx",)


class Engine(Protocol):
    backend: str

    def run(self, batch: Tensor) -> list[Tensor]: ...


class InferenceModel:
    """A model ready for inference: its :class:`ModelInfo` and an engine that runs batches.

    ``model(batch)`` returns the first output (a classifier's logits, or probabilities when the
    file was exported with the preprocessing in the graph) as a float32 tensor; :meth:`outputs`
    returns every output, which is what a detector's decoding will read. :meth:`preprocess` turns
    decoded ``uint8 (N, C, H, W)`` images into the batch this model takes, so
    ``model.probabilities(model.preprocess(images))`` is right for every kind of file.
    """

    def __init__(self, engine: Engine, info: ModelInfo, *, resources: list[Any] | None = None) -> None:
        self.engine, self.info = engine, info
        # Set when the source was a `cspnet train` checkpoint: its TrainedModel (train_config: the
        # run's data and settings, weights: "ema" or "raw"), for commands that evaluate on the run's data.
        self.trained: Any = None
        # Kept alive with the model: e.g. the temporary folder of the ONNX file an engine compiled.
        self._resources = resources or []

    @property
    def backend(self) -> str:
        return self.engine.backend

    @property
    def precision(self) -> str:
        return self.info.precision

    def __repr__(self) -> str:
        return f"InferenceModel({self.info.model_name!r}, backend={self.backend!r}, precision={self.precision!r})"

    def preprocess(self, images_uint8: Tensor) -> Tensor:
        return self.info.preprocess(images_uint8)

    def check_input(self, batch: Tensor) -> Tensor:
        """``batch`` as the engine takes it, else ``ValueError`` saying what the model takes.

        A float model accepts any floating dtype (float64 from NumPy, bf16, fp16), cast to float32
        here so that every engine takes the same inputs; a uint8 model takes uint8 pixels only.
        """
        expected = self.info.input_shape
        uint8 = self.info.input_format == "uint8_nhwc"
        layout = "uint8 (N, H, W, C) pixels" if uint8 else "float (N, C, H, W), normalised"
        if batch.dim() != 4 or tuple(batch.shape[1:]) != expected:
            raise ValueError(
                f"input batch of shape {tuple(batch.shape)} does not fit {self.info.model_name}: it takes "
                f"{layout} of shape (N, {', '.join(map(str, expected))}) (img_size {self.info.img_size})"
            )
        if uint8 != (batch.dtype == torch.uint8) or not (uint8 or batch.is_floating_point()):
            raise ValueError(f"input batch is {batch.dtype}; {self.info.model_name} takes {layout}")
        return batch if uint8 else batch.float()

    def outputs(self, batch: Tensor | np.ndarray) -> list[Tensor]:
        """Every output of the model for ``batch`` (float32 tensors, batch first)."""
        if isinstance(batch, np.ndarray):
            batch = torch.from_numpy(batch)
        return self.engine.run(self.check_input(batch))

    def __call__(self, batch: Tensor | np.ndarray) -> Tensor:
        return self.outputs(batch)[0]

    def logits(self, batch: Tensor | np.ndarray) -> Tensor:
        """Logits, or log-probabilities for a file that outputs probabilities: equal up to a constant
        per image, so softmax, top-k and cross-entropy are the same for both."""
        out = self(batch)
        return out.clamp_min(torch.finfo(out.dtype).tiny).log() if self.info.output == "probabilities" else out

    def probabilities(self, batch: Tensor | np.ndarray) -> Tensor:
        out = self(batch)
        return out if self.info.output == "probabilities" else out.softmax(dim=1)


# --- what a source is ------------------------------------------------------------------------------


def _is_torchscript(path: Path) -> bool:
    # torch.jit.save writes a zip archive with the code under <name>/code/; torch.save's zip has data.pkl only.
    try:
        if not zipfile.is_zipfile(path):
            return False
        with zipfile.ZipFile(path) as archive:
            return any("/code/" in name for name in archive.namelist())
    except (zipfile.BadZipFile, OSError, ValueError):  # a damaged archive: whoever reads it says why
        return False


def _load_torchscript(path: Path) -> tuple[Any, ModelInfo]:
    import warnings

    extra = {TORCHSCRIPT_METADATA: ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated upstream
        try:
            module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
        except (RuntimeError, ValueError, OSError) as exc:  # torch.jit's own errors are RuntimeErrors
            raise ValueError(f"{path} is not a TorchScript archive torch.jit.load can read: {engine_message(exc)}") from exc
    return module.eval(), read_torchscript_info(extra, str(path))


def _checked_against_graph(model: InferenceModel, source: Path) -> InferenceModel:
    """``model`` after one image (zeros) went through its graph as the metadata describes it.

    What a graph's declared shapes cannot say (a TorchScript graph declares none; an ONNX graph may
    leave axes dynamic) shows here: an input the graph refuses, a class count that is not the
    graph's, ``output="probabilities"`` on a graph of logits. Each is a one-line ``ValueError``.
    """
    info = model.info
    probe = torch.zeros(1, *info.input_shape, dtype=torch.uint8 if info.input_type == "uint8" else torch.float32)
    try:
        first = model.engine.run(probe)[0]
    except MemoryError:
        raise
    except Exception as exc:  # the engine's own error types (onnxruntime, OpenVINO, TorchScript)
        raise ValueError(
            f"{source}: the graph does not run on the input its metadata describes ({info.input_type} "
            f"(1, {', '.join(map(str, info.input_shape))})): {engine_message(exc)}"
        ) from exc
    info.check_output(first, str(source))
    return model


def _torch_source(
    source: str | os.PathLike[str], *, weights: str | os.PathLike[str] | None, num_classes: int | None,
    img_size: int | None, overrides: Mapping[str, Any], ema: bool, expected_model: str | None,
) -> tuple[nn.Module, ModelInfo, Any]:  # fmt: skip
    """A registered name (with optional weights) or a ``cspnet train`` checkpoint -> model, info and the
    :class:`~cspnet.trained.TrainedModel` (``None`` for a registered name)."""
    from cspnet.models import create_model, get_model_entry
    from cspnet.trained import is_training_checkpoint, load_trained

    path = Path(source)
    if path.is_file() or path.suffix or os.sep in str(source):
        if path.is_file() and not is_training_checkpoint(path):
            from cspnet.convert import load_torch_file

            if path.suffix.lower() not in (".safetensors", ".weights"):
                load_torch_file(path, "checkpoint")  # empty, truncated, refused: says which, in one line
            raise ValueError(
                f"{path} is not a `cspnet train` checkpoint, an .onnx file or a TorchScript archive (for other "
                "weight files pass the model name and weights=FILE)"
            )
        trained = load_trained(path, expected_model=expected_model, ema=ema, task="classification")  # a missing file: CheckpointError
        if num_classes is not None and num_classes != len(trained.class_names):
            raise ValueError(f"num_classes {num_classes} contradicts the checkpoint's {len(trained.class_names)} classes")
        from cspnet.data.transforms import run_crop_pct

        info = ModelInfo(
            trained.name, tuple(trained.class_names), img_size or trained.img_size,
            tuple(float(v) for v in trained.mean), tuple(float(v) for v in trained.std),
            **ModelInfo.resize_fields(run_crop_pct(trained.train_config)),  # type: ignore[arg-type]
        )  # fmt: skip
        return trained.model, info, trained
    name = str(source)
    entry = get_model_entry(name)
    if expected_model and expected_model != name:
        raise ValueError(f"model {name!r} is not {expected_model!r}")
    classes = 1000 if num_classes is None else num_classes
    model = create_model(name, pretrained=weights or False, num_classes=classes, **dict(overrides))
    return model, default_info(name, classes, img_size or entry.input_size[-1], in_chans=entry.input_size[0]), None


def _check_precision(backend: str, precision: str) -> None:
    runs = BACKEND_PRECISIONS[backend]
    if precision not in runs:
        raise ValueError(f"backend {backend!r} does not run {precision}: it runs {', '.join(runs)}")


def load_model(
    source: str | os.PathLike[str],
    backend: str = "torch",
    *,
    precision: str | None = None,
    batch_size: int = 1,
    threads: int | None = None,
    weights: str | os.PathLike[str] | None = None,
    num_classes: int | None = None,
    img_size: int | None = None,
    overrides: Mapping[str, Any] | None = None,
    ema: bool = True,
    expected_model: str | None = None,
    calibration_data: str | os.PathLike[str] | None = None,
    calibration_images: int | None = None,
) -> InferenceModel:
    """Load ``source`` for inference on ``backend`` (``"torch"``, ``"onnxruntime"`` or ``"openvino"``).

    ``source`` is a registered model name (``weights``: any file ``create_model(pretrained=...)``
    reads), a ``cspnet train`` checkpoint (EMA weights unless ``ema=False``; model, classes, input
    size and normalisation from the file), an exported ``.onnx`` file or a TorchScript archive
    written by ``cspnet export`` (both carry their :class:`ModelInfo`). A PyTorch model runs on
    onnxruntime or OpenVINO through a folded ONNX export made here, in a temporary folder.

    ``precision``: ``None`` runs what the source holds (fp32, or the precision of an int8 file);
    ``"bf16"`` (torch, openvino) computes in bfloat16; ``"int8"`` (onnxruntime, openvino) quantises
    a PyTorch model or an fp32 ONNX file on ``calibration_data`` (``"digits"`` or an image folder).
    ``batch_size`` is the batch the caller expects: OpenVINO compiles for latency at 1 and for
    throughput above. ``threads``: compute threads (default: one per physical core for the
    engines, torch's own choice for torch).

    Raises ``ValueError`` (or ``CheckpointError``, ``FileNotFoundError``) with one line for a source
    that is not a model, and :class:`BackendNotInstalledError` naming the extra for a missing engine.
    """
    _check_options(backend, batch_size, img_size)
    path = Path(source)
    if path.suffix.lower() in ONNX_SUFFIXES:
        info = _onnx_file_info(path, backend, img_size, expected_model)
        loaded = _onnx_model(path, info, backend, precision, batch_size=batch_size, threads=threads,
                             calibration_data=calibration_data, calibration_images=calibration_images)  # fmt: skip
        return _checked_against_graph(loaded, path)
    if path.is_file() and _is_torchscript(path):
        if backend != "torch":
            raise ValueError(f"{path} is TorchScript, which runs on backend 'torch'; export ONNX for {backend}")
        return _checked_against_graph(_torchscript_model(path, precision, img_size, threads), path)
    model, info, trained = _torch_source(
        source, weights=weights, num_classes=num_classes, img_size=img_size, overrides=overrides or {}, ema=ema,
        expected_model=expected_model,
    )  # fmt: skip
    loaded = _pytorch_model(model, info, backend, precision, batch_size=batch_size, threads=threads,
                            calibration_data=calibration_data, calibration_images=calibration_images)  # fmt: skip
    loaded.trained = trained
    return loaded


def _check_options(backend: str, batch_size: int, img_size: int | None) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r} is invalid: expected one of {', '.join(BACKENDS)}")
    if backend != "torch":
        import_backend(backend)  # a missing engine is the first thing to report
    if batch_size < 1:
        raise ValueError(f"batch_size {batch_size} is invalid: expected a positive integer")
    if img_size is not None:
        check_img_size(img_size, what="img_size")


def _onnx_file_info(path: Path, backend: str, img_size: int | None, expected_model: str | None) -> ModelInfo:
    """The checked metadata of an ONNX file that ``backend`` is to run."""
    if backend == "torch":
        raise ValueError(f"{path} is an ONNX file: run it with backend 'onnxruntime' or 'openvino'")
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    info = read_onnx_info(path)
    _check_size(info, img_size, path)
    if expected_model and expected_model != info.model_name:
        raise ValueError(f"{path} holds a {info.model_name!r} model, not {expected_model!r}")
    return info


def _torchscript_model(path: Path, precision: str | None, img_size: int | None, threads: int | None) -> InferenceModel:
    module, info = _load_torchscript(path)
    _check_size(info, img_size, path)
    if (precision or info.precision) != info.precision:
        raise ValueError(f"{path} holds {info.precision} weights; re-export it for {precision}")
    return InferenceModel(TorchEngine(module, channels_last=False, threads=threads), info)


def _pytorch_model(
    model: nn.Module, info: ModelInfo, backend: str, precision: str | None, *, batch_size: int,
    threads: int | None, calibration_data: str | os.PathLike[str] | None, calibration_images: int | None,
) -> InferenceModel:  # fmt: skip
    """A PyTorch model on ``backend``: folded in place (torch), or through an ONNX export made here."""
    from cspnet.export import optimize_for_inference
    from cspnet.export.formats import export_onnx

    want = precision or "fp32"
    _check_precision(backend, want)
    if backend == "torch":
        dtype = torch.bfloat16 if want == "bf16" else torch.float32
        return InferenceModel(TorchEngine.from_model(model, dtype, threads=threads), info.with_(precision=want))
    folder = tempfile.TemporaryDirectory(prefix="cspnet-")
    onnx_path = Path(folder.name) / f"{info.model_name}.onnx"
    example = torch.zeros(2, info.in_chans, info.img_size, info.img_size)
    export_onnx(optimize_for_inference(model, channels_last=False), onnx_path, example, metadata=info.to_metadata())
    loaded = _onnx_model(onnx_path, info, backend, precision, batch_size=batch_size, threads=threads,
                         calibration_data=calibration_data, calibration_images=calibration_images)  # fmt: skip
    loaded._resources.append(folder)
    return loaded


def _check_size(info: ModelInfo, img_size: int | None, path: Path) -> None:
    if img_size is not None and img_size != info.img_size:
        raise ValueError(f"{path} takes {info.img_size}x{info.img_size} images, not img_size {img_size}")


def _onnx_model(
    path: Path, info: ModelInfo, backend: str, precision: str | None, *, batch_size: int, threads: int | None,
    calibration_data: str | os.PathLike[str] | None, calibration_images: int | None,
) -> InferenceModel:  # fmt: skip
    """An ONNX file on onnxruntime or OpenVINO; quantised to int8 first when asked for."""
    want = precision or info.precision
    _check_precision(backend, want)
    folder = None
    if want == "int8" and info.precision != "int8":
        if calibration_data is None:
            raise ValueError("int8 needs calibration images: pass calibration_data ('digits' or an image folder)")
        from cspnet.export.quantize import DEFAULT_CALIBRATION_IMAGES, quantize_int8

        folder = tempfile.TemporaryDirectory(prefix="cspnet-int8-")
        path = quantize_int8(path, Path(folder.name) / "int8.onnx", info, calibration_data,
                             count=calibration_images or DEFAULT_CALIBRATION_IMAGES, engine=backend)  # fmt: skip
        info = info.with_(precision="int8")
    elif want != info.precision and not (want == "bf16" and info.precision == "fp32"):
        raise ValueError(f"{path} holds a {info.precision} model; it cannot run as {want}")
    engine: Engine
    if backend == "onnxruntime":
        engine = OnnxRuntimeEngine(path, threads=threads)
    else:
        engine = OpenVinoEngine(path, batch_size=batch_size, threads=threads, precision=want)
        info = info.with_(precision=want)
    return InferenceModel(engine, info, resources=[folder] if folder else None)
