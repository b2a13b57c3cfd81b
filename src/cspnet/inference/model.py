"""``load_model``: one way to run a model for inference, whatever it was saved as, on any engine.

>>> import torch
>>> from cspnet.inference import load_model
>>> model = load_model("cspdensenet_bc40", num_classes=3, img_size=32)
>>> model.backend, model.info.input_shape, tuple(model(torch.randn(2, 3, 32, 32)).shape)
('torch', (3, 32, 32), (2, 3))

A detector (a registered name, a ``cspnet detect train`` checkpoint, an exported detector file)
comes back as a :class:`~cspnet.inference.detection.DetectionModel`, whose ``detect(images)``
returns boxes on the user's images.
"""

from __future__ import annotations

import logging
import os
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cspnet.inference.base import Engine, InferenceModel
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
        outputs = model.engine.run(probe)
    except MemoryError:
        raise
    except Exception as exc:  # the engine's own error types (onnxruntime, OpenVINO, TorchScript)
        raise ValueError(
            f"{source}: the graph does not run on the input its metadata describes ({info.input_type} "
            f"(1, {', '.join(map(str, info.input_shape))})): {engine_message(exc)}"
        ) from exc
    info.check_outputs(outputs, 1, str(source))
    return model


def _model_for(engine: Engine, info: ModelInfo, resources: list[Any] | None = None, batch_size: int = 1) -> InferenceModel:
    """The loaded model for ``info``'s task: a :class:`DetectionModel` for a detector."""
    if info.task != "detection":
        return InferenceModel(engine, info, resources=resources)
    from cspnet.inference.detection import DetectionModel

    model = DetectionModel(engine, info, resources=resources)
    model.batch_size = batch_size
    return model


@dataclass
class _Built:
    """A PyTorch model to run, its contract, and the training run it came from (``None``: a registered name)."""

    model: nn.Module
    info: ModelInfo
    trained: Any = None


def _torch_source(
    source: str | os.PathLike[str], *, weights: str | os.PathLike[str] | None, num_classes: int | None,
    img_size: int | None, overrides: Mapping[str, Any], ema: bool, expected_model: str | None,
    class_names: Sequence[str] | str | None, task: str | None = None,
) -> _Built:  # fmt: skip
    """A registered name (with optional weights) or a training checkpoint (of ``task``, when given)."""
    from cspnet.trained import is_training_checkpoint, load_trained

    path = Path(source)
    if not (path.is_file() or path.suffix or os.sep in str(source)):
        return _registered(str(source), weights=weights, num_classes=num_classes, img_size=img_size,
                           overrides=overrides, expected_model=expected_model, class_names=class_names)  # fmt: skip
    if path.is_file() and not is_training_checkpoint(path):
        from cspnet.convert import load_torch_file

        if path.suffix.lower() not in (".safetensors", ".weights"):
            load_torch_file(path, "checkpoint")  # empty, truncated, refused: says which, in one line
        raise ValueError(
            f"{path} is not a `cspnet train` checkpoint, an .onnx file or a TorchScript archive (nor a `cspnet detect "
            "train` checkpoint; for other weight files pass the model name and weights=FILE)"
        )
    trained = load_trained(path, expected_model=expected_model, ema=ema, task=task)  # a missing file: CheckpointError
    if num_classes is not None and num_classes != len(trained.class_names):
        raise ValueError(f"num_classes {num_classes} contradicts the checkpoint's {len(trained.class_names)} classes")
    if class_names is not None:
        raise ValueError(f"{path} names its own classes: class_names is for a registered model with weights")
    size = img_size or trained.img_size
    if trained.task == "detection":
        from cspnet.detection.export import detector_info

        check_img_size(size, trained.model, what="img_size")
        info = detector_info(trained.model, size, trained.class_names, name=trained.name, mean=trained.mean,  # type: ignore[arg-type]
                             std=trained.std, category_ids=trained.category_ids)  # fmt: skip
        return _Built(trained.model, info, trained)
    from cspnet.data.transforms import run_crop_pct

    info = ModelInfo(
        trained.name, tuple(trained.class_names), size, tuple(float(v) for v in trained.mean),
        tuple(float(v) for v in trained.std),
        **ModelInfo.resize_fields(run_crop_pct(trained.train_config)),  # type: ignore[arg-type]
    )  # fmt: skip
    return _Built(trained.model, info, trained)


def _registered(
    name: str, *, weights: str | os.PathLike[str] | None, num_classes: int | None, img_size: int | None,
    overrides: Mapping[str, Any], expected_model: str | None, class_names: Sequence[str] | str | None,
) -> _Built:  # fmt: skip
    """A registered model, with ``weights`` (any file ``create_model(pretrained=...)`` reads) if given."""
    from cspnet.models import create_model, get_model_entry

    entry = get_model_entry(name)
    if expected_model and expected_model != name:
        raise ValueError(f"model {name!r} is not {expected_model!r}")
    names, category_ids = _class_names(class_names, num_classes)
    classes = len(names) if names is not None else num_classes if num_classes is not None else entry.num_classes
    model = create_model(name, pretrained=weights or False, num_classes=classes, **dict(overrides))
    size = img_size or entry.input_size[-1]
    if entry.task == "detection":
        from cspnet.detection.export import detector_info

        check_img_size(size, model, what="img_size")
        model.name = name  # type: ignore[assignment]
        return _Built(model, detector_info(model, size, names, name=name, category_ids=category_ids))  # type: ignore[arg-type]
    return _Built(model, default_info(name, classes, size, class_names=names, in_chans=entry.input_size[0]))


def _class_names(class_names: Sequence[str] | str | None, num_classes: int | None,
                 ) -> tuple[tuple[str, ...] | None, tuple[int, ...] | None]:  # fmt: skip
    """Names given for a registered model (a list, ``"coco"`` or a names file) and their COCO ids."""
    if class_names is None:
        return None, None
    if isinstance(class_names, str | os.PathLike):
        from cspnet.detection.coco import class_names_from

        names, ids = class_names_from(class_names)
    else:
        names, ids = tuple(class_names), None
    if num_classes is not None and num_classes != len(names):
        raise ValueError(f"num_classes {num_classes} contradicts the {len(names)} class names given")
    return names, ids


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
    class_names: Sequence[str] | str | None = None,
    task: str | None = None,
) -> InferenceModel:
    """Load ``source`` for inference on ``backend`` (``"torch"``, ``"onnxruntime"`` or ``"openvino"``).

    ``source`` is a registered model name (``weights``: any file ``create_model(pretrained=...)``
    reads), a ``cspnet train`` checkpoint (EMA weights unless ``ema=False``; model, classes, input
    size and normalisation from the file), an exported ``.onnx`` file or a TorchScript archive
    written by ``cspnet export`` (both carry their :class:`ModelInfo`). A PyTorch model runs on
    onnxruntime or OpenVINO through a folded ONNX export made here, in a temporary folder.

    ``precision``: ``None`` runs what the source holds (fp32, or the precision of an int8 file);
    ``"bf16"`` (torch, openvino) computes in bfloat16; ``"int8"`` (onnxruntime, openvino) quantises
    a PyTorch model or an fp32 ONNX file on ``calibration_data`` (``"digits"`` or an image folder;
    for a detector also a COCO ``.json`` or YOLO ``data.yaml``, see :mod:`cspnet.detection.calibration`).
    ``batch_size`` is the batch the caller expects: OpenVINO compiles for latency at 1 and for
    throughput above (a detector's ``detect`` runs that many images at a time). ``threads``:
    compute threads (default: one per physical core for the engines, torch's own choice for torch).
    ``class_names`` (a registered model only): a list, ``"coco"`` (COCO's 80, with their category
    ids) or a file with one name per line; they set the number of classes. ``task``
    (``"classification"``, ``"detection"``): the task the caller handles; a source of the other is
    refused in one line naming the commands for it.

    A detector is a :class:`~cspnet.inference.detection.DetectionModel` (``detect(images)``); on
    ``"torch"`` its network runs folded in ``precision`` and its box decoding in float32; on the
    engines, the file's graph (decoding inside, NMS if it was exported with it).

    Raises ``ValueError`` (or ``CheckpointError``, ``FileNotFoundError``) with one line for a source
    that is not a model, and :class:`BackendNotInstalledError` naming the extra for a missing engine.
    """
    _check_options(backend, batch_size, img_size)
    path = Path(source)
    if class_names is not None and (path.suffix.lower() in ONNX_SUFFIXES or path.is_file()):
        raise ValueError(f"{path} names its own classes: class_names is for a registered model with weights")
    if path.suffix.lower() in ONNX_SUFFIXES:
        info = _onnx_file_info(path, backend, img_size, expected_model)
        _check_task(info, task, path)
        loaded = _onnx_model(path, info, backend, precision, batch_size=batch_size, threads=threads,
                             calibration_data=calibration_data, calibration_images=calibration_images)  # fmt: skip
        return _checked_against_graph(loaded, path)
    if path.is_file() and _is_torchscript(path):
        if backend != "torch":
            raise ValueError(f"{path} is TorchScript, which runs on backend 'torch'; export ONNX for {backend}")
        loaded = _torchscript_model(path, precision, img_size, threads)
        _check_task(loaded.info, task, path)
        return _checked_against_graph(loaded, path)
    built = _torch_source(
        source, weights=weights, num_classes=num_classes, img_size=img_size, overrides=overrides or {}, ema=ema,
        expected_model=expected_model, class_names=class_names, task=task,
    )  # fmt: skip
    _check_task(built.info, task, source)
    loaded = _pytorch_model(built.model, built.info, backend, precision, batch_size=batch_size, threads=threads,
                            calibration_data=calibration_data, calibration_images=calibration_images)  # fmt: skip
    loaded.trained = built.trained
    return loaded


_COMMANDS = {"classification": "cspnet predict / eval / export", "detection": "cspnet detect predict / val / export"}


def _check_task(info: ModelInfo, task: str | None, source: str | os.PathLike[str]) -> None:
    if task is not None and info.task != task:
        raise ValueError(f"{source} holds a {info.task} model ({info.model_name}): use {_COMMANDS[info.task]}")


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
    return _model_for(TorchEngine(module, channels_last=False, threads=threads), info)


def _pytorch_model(
    model: nn.Module, info: ModelInfo, backend: str, precision: str | None, *, batch_size: int,
    threads: int | None, calibration_data: str | os.PathLike[str] | None, calibration_images: int | None,
) -> InferenceModel:  # fmt: skip
    """A PyTorch model on ``backend``: folded in place (torch), or through an ONNX export made here."""
    want = precision or "fp32"
    _check_precision(backend, want)
    if backend == "torch":
        dtype = torch.bfloat16 if want == "bf16" else torch.float32
        if info.task == "detection":
            from cspnet.inference.detection import torch_detector_engine

            engine: Engine = torch_detector_engine(model, dtype, threads=threads)
        else:
            engine = TorchEngine.from_model(model, dtype, threads=threads)
        return _model_for(engine, info.with_(precision=want), batch_size=batch_size)
    folder = tempfile.TemporaryDirectory(prefix="cspnet-")
    onnx_path = Path(folder.name) / f"{info.model_name}.onnx"
    _export_for_engine(model, info, onnx_path)
    loaded = _onnx_model(onnx_path, info, backend, precision, batch_size=batch_size, threads=threads,
                         calibration_data=calibration_data, calibration_images=calibration_images)  # fmt: skip
    loaded._resources.append(folder)
    return loaded


def _export_for_engine(model: nn.Module, info: ModelInfo, path: Path) -> None:
    """The ONNX file an engine runs a PyTorch model from (a detector's: decoding inside, no NMS)."""
    if info.task == "detection":
        from cspnet.detection.export import export_detector_onnx

        export_detector_onnx(model, path, info.img_size, info=info)  # type: ignore[arg-type]
        return
    from cspnet.export import optimize_for_inference
    from cspnet.export.formats import export_onnx

    example = torch.zeros(2, info.in_chans, info.img_size, info.img_size)
    export_onnx(optimize_for_inference(model, channels_last=False), path, example, metadata=info.to_metadata())


def _check_size(info: ModelInfo, img_size: int | None, path: Path) -> None:
    if img_size is not None and img_size != info.img_size:
        raise ValueError(f"{path} takes {info.img_size}x{info.img_size} images, not img_size {img_size}")


def _onnx_model(
    path: Path, info: ModelInfo, backend: str, precision: str | None, *, batch_size: int, threads: int | None,
    calibration_data: str | os.PathLike[str] | None, calibration_images: int | None,
) -> InferenceModel:  # fmt: skip
    """An ONNX file on onnxruntime or OpenVINO; quantised to int8 first when asked for."""
    want = precision or info.precision
    if precision is None and info.precision == "bf16" and "bf16" not in BACKEND_PRECISIONS[backend]:
        want = "fp32"  # a file exported for bf16 (OpenVINO) holds fp32 weights: other engines run them as they are
    _check_precision(backend, want)
    folder = None
    if want == "int8" and info.precision != "int8":
        if calibration_data is None:
            raise ValueError("int8 needs calibration images: pass calibration_data ('digits' or an image folder)")
        folder = tempfile.TemporaryDirectory(prefix="cspnet-int8-")
        path = _quantized(path, Path(folder.name) / "int8.onnx", info, calibration_data, calibration_images, backend)
        info = info.with_(precision="int8")
    elif want != info.precision and {want, info.precision} != {"fp32", "bf16"}:  # bf16 is a compute choice
        raise ValueError(f"{path} holds a {info.precision} model; it cannot run as {want}")
    engine: Engine
    if backend == "onnxruntime":
        engine = OnnxRuntimeEngine(path, threads=threads)
    else:
        engine = OpenVinoEngine(path, batch_size=batch_size, threads=threads, precision=want)
    return _model_for(engine, info.with_(precision=want), [folder] if folder else None, batch_size)


def _quantized(path: Path, target: Path, info: ModelInfo, data: str | os.PathLike[str], count: int | None,
               engine: str) -> Path:  # fmt: skip
    """The int8 version of the fp32 ONNX file ``path`` for ``engine``, calibrated on ``data`` (a detector:
    letterboxed images, its network quantised and its decoding left in float)."""
    from cspnet.export.quantize import DEFAULT_CALIBRATION_IMAGES, quantize_int8

    count = count or DEFAULT_CALIBRATION_IMAGES
    if info.task != "detection":
        return quantize_int8(path, target, info, data, count=count, engine=engine)
    from cspnet.detection.calibration import calibration_split
    from cspnet.detection.export import quantize_detector

    split = calibration_split(data, info.img_size, count, pad_value=info.pad_value, held_out=False)
    return quantize_detector(path, target, info, split.images, split.description, engine=engine)
