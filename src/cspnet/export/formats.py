"""Writing a model as ONNX or TorchScript, and checking the file against PyTorch.

Both formats start from :func:`~cspnet.export.optimize_for_inference` (conv/BN folded), so the file
holds the fast graph. The check runs the written file (onnxruntime, or ``torch.jit.load``) on a batch
of a *different* size than the one used for export, which proves the batch axis is really dynamic.

Exporter choices (torch 2.13), see ``docs/deployment.md``:

* ONNX: the TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``) with
  ``dynamic_axes`` on the batch: it exports every registered model in about a second. The
  ``torch.export``-based exporter (``exporter="dynamo"``) works too but is ~10x slower to export and
  needs ``dynamic_shapes``; it is kept as an option.
* TorchScript: ``torch.jit.script`` (keeps every shape dynamic, no example-input tracing pitfalls),
  then ``torch.jit.freeze`` to inline the weights as constants. ``method="trace"`` is available for
  models that cannot be scripted.

Files are self-describing: given a :class:`~cspnet.inference.ModelInfo` (class names, input size,
resize rule, mean and std), :func:`export_model` writes it into the ONNX ``metadata_props`` or the
TorchScript archive's extra file ``cspnet.json``; :func:`cspnet.inference.load_model` reads it back.
``preprocessing_in_graph=True`` puts the normalisation and the softmax in the graph (uint8 NHWC
pixels in, probabilities out), and ``int8_calibration=`` quantises the ONNX file
(:mod:`cspnet.export.quantize`).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor, nn

from cspnet.export.fold import optimize_for_inference

if TYPE_CHECKING:
    from cspnet.metadata import ModelInfo

ExportFormat = Literal["onnx", "torchscript"]
EXPORT_FORMATS: tuple[str, ...] = ("onnx", "torchscript")
ONNX_OPSET = 18

Runner = Callable[[Tensor], Tensor]


class PreprocessingInGraph(nn.Module):
    """``uint8 (N, H, W, C)`` RGB pixels -> class probabilities: normalisation and softmax around ``model``.

    Exported, it lets a deploying program feed decoded (and resized) images straight to the engine.

    >>> import torch
    >>> wrapped = PreprocessingInGraph(torch.nn.Flatten(), mean=(0.5,), std=(0.5,))
    >>> wrapped(torch.full((1, 1, 2, 1), 255, dtype=torch.uint8)).tolist()
    [[0.5, 0.5]]
    """

    def __init__(self, model: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.model = model
        # 1 / (255 std) and mean / std folded into one multiply-add, computed here in float64.
        scale = [1.0 / (255.0 * s) for s in std]
        shift = [-m / s for m, s in zip(mean, std)]
        # Frozen parameters rather than buffers: typed attributes for mypy, constants in the exported graph.
        self.scale = nn.Parameter(torch.tensor(scale, dtype=torch.float32).view(1, -1, 1, 1), requires_grad=False)
        self.shift = nn.Parameter(torch.tensor(shift, dtype=torch.float32).view(1, -1, 1, 1), requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        x = x.permute(0, 3, 1, 2).float() * self.scale + self.shift
        return self.model(x).softmax(dim=1)


def write_onnx_metadata(path: str | os.PathLike[str], metadata: Mapping[str, str]) -> None:
    """Set ``metadata`` as the ONNX file's ``metadata_props`` (replacing keys of the same name)."""
    import onnx

    proto = onnx.load(str(path))
    kept = {p.key: p.value for p in proto.metadata_props if p.key not in metadata}
    del proto.metadata_props[:]
    for key, value in {**kept, **metadata}.items():
        proto.metadata_props.add(key=key, value=str(value))
    onnx.save(proto, str(path))


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    example: Tensor,
    *,
    opset: int = ONNX_OPSET,
    exporter: Literal["torchscript", "dynamo"] = "torchscript",
    metadata: Mapping[str, str] | None = None,
    input_name: str = "input",
    output_name: str = "logits",
) -> Path:
    """Write ``model`` as ONNX with a dynamic batch axis (input ``input`` / output ``logits`` by default)."""
    path = Path(path)
    model = model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporters' deprecation and tracer notices are not actionable here
        if exporter == "dynamo":
            batch = torch.export.Dim("batch", min=1, max=4096)
            torch.onnx.export(
                model, (example,), str(path), input_names=[input_name], output_names=[output_name],
                opset_version=opset, dynamo=True, dynamic_shapes=({0: batch},), verbose=False,
            )  # fmt: skip
        elif exporter == "torchscript":
            torch.onnx.export(
                model, (example,), str(path), input_names=[input_name], output_names=[output_name],
                opset_version=opset, dynamo=False,
                dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}},
            )  # fmt: skip
        else:
            raise ValueError(f"exporter={exporter!r} is invalid: expected 'torchscript' or 'dynamo'")
    if metadata:
        write_onnx_metadata(path, metadata)
    return path


def export_torchscript(
    model: nn.Module,
    path: str | os.PathLike[str],
    example: Tensor,
    *,
    method: Literal["script", "trace"] = "script",
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write ``model`` as a frozen TorchScript archive (``torch.jit.load`` reads it back).

    ``metadata`` is stored as the archive's extra file ``cspnet.json``.
    """
    path = Path(path)
    model = model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated in favour of torch.export
        if method == "script":
            module = torch.jit.script(model)
        elif method == "trace":
            with torch.no_grad():
                module = torch.jit.trace(model, example)
        else:
            raise ValueError(f"method={method!r} is invalid: expected 'script' or 'trace'")
        module = torch.jit.freeze(module)
        extra = {"cspnet.json": json.dumps(dict(metadata))} if metadata else {}
        torch.jit.save(module, str(path), _extra_files=extra)
    return path


def load_runner(path: str | os.PathLike[str], fmt: ExportFormat) -> Runner:
    """A function running the exported file on a float tensor batch, on the CPU."""
    path = Path(path)
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        input_name = session.get_inputs()[0].name
        return lambda x: torch.from_numpy(session.run(None, {input_name: x.contiguous().numpy()})[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        module = torch.jit.load(str(path), map_location="cpu")
    module.eval()

    def run(x: Tensor) -> Tensor:
        with torch.no_grad():
            return module(x)

    return run


def relative_difference(reference: Tensor, other: Tensor) -> float:
    """``max|reference - other| / max|reference|`` (0 for two zero tensors)."""
    if reference.shape != other.shape:
        raise ValueError(f"exported model returns shape {tuple(other.shape)}, PyTorch {tuple(reference.shape)}")
    scale = reference.abs().max().clamp_min(torch.finfo(reference.dtype).tiny)
    return ((reference - other).abs().max() / scale).item()


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_model` wrote and how closely the file reproduces PyTorch.

    For an int8 file the relative difference is a quantisation error, not a bug; what counts is
    ``top1_agreement``: the share of ``agreement_images`` held-out images on which the int8 file
    and the fp32 PyTorch model predict the same class.
    """

    path: Path
    format: str
    export_batch: int
    check_batch: int
    max_abs_diff: float
    max_rel_diff: float
    precision: str = "fp32"
    preprocessing_in_graph: bool = False
    file_bytes: int = 0
    fp32_file_bytes: int = 0
    top1_agreement: float | None = None
    agreement_images: int = 0
    calibration: str = ""

    def within(self, tolerance: float) -> bool:
        """Whether the file reproduces PyTorch: relative difference ``<= tolerance`` (fp32; NaN fails)."""
        if self.precision == "int8":
            return self.max_rel_diff == self.max_rel_diff  # quantisation error is expected; only NaN fails
        return self.max_rel_diff <= tolerance

    def summary(self) -> str:
        kind = self.format + (", preprocessing in graph" if self.preprocessing_in_graph else "")
        text = (
            f"wrote {self.path} ({kind}, exported at batch {self.export_batch}); checked at batch "
            f"{self.check_batch}: max |diff| = {self.max_abs_diff:.3g} ({self.max_rel_diff:.3g} relative)"
        )
        if self.precision == "int8" and self.top1_agreement is not None:
            text += (
                f"; int8 (QDQ, per-channel, calibrated on {self.calibration}): {self.file_bytes / 2**20:.2f} MiB "
                f"against {self.fp32_file_bytes / 2**20:.2f} MiB in fp32, top-1 agrees with fp32 PyTorch on "
                f"{100 * self.top1_agreement:.2f}% of {self.agreement_images} held-out images"
            )
        return text


def _example_batch(info: ModelInfo, batch_size: int, seed: int = 0) -> Tensor:
    """A random batch in the layout ``info`` says the file takes."""
    gen = torch.Generator().manual_seed(seed)
    if info.input_format == "uint8_nhwc":
        return torch.randint(0, 256, (batch_size, *info.input_shape), generator=gen, dtype=torch.uint8)
    return torch.randn(batch_size, *info.input_shape, generator=gen)


def _model_info(model: nn.Module, img_size: int, in_chans: int) -> ModelInfo:
    from cspnet.metadata import default_info

    with torch.no_grad():
        num_classes = int(model(torch.zeros(1, in_chans, img_size, img_size)).shape[1])
    return default_info(getattr(model, "name", "") or type(model).__name__, num_classes, img_size, in_chans=in_chans)


def export_model(
    model: nn.Module,
    fmt: ExportFormat,
    path: str | os.PathLike[str],
    img_size: int,
    *,
    in_chans: int = 3,
    export_batch: int = 2,
    check_batch: int = 3,
    optimize: bool = True,
    info: ModelInfo | None = None,
    preprocessing_in_graph: bool = False,
    int8_calibration: str | os.PathLike[str] | None = None,
    calibration_images: int | None = None,
    agreement_images: int = 256,
    **options: str,
) -> ExportResult:
    """Export ``model`` to ``path`` and compare the file's outputs with PyTorch's at ``check_batch``.

    The reference is ``model.eval()`` itself (not the folded copy), so the comparison covers the
    folding too. ``info`` (default: class indices, ImageNet statistics) is written into the file.
    ``preprocessing_in_graph``: the file takes ``uint8 (N, H, W, C)`` pixels and returns
    probabilities; the reference is then PyTorch with the Python preprocessing and a softmax.
    ``int8_calibration`` (``"digits"`` or an image folder; ONNX only): the file is int8, calibrated
    on ``calibration_images`` images of it, and compared on ``agreement_images`` others.
    ``options`` go to the format's exporter (``exporter=`` for ONNX, ``method=`` for TorchScript).
    Raises ``ValueError`` for an unknown format.

    >>> import cspnet, tempfile, os
    >>> model = cspnet.create_model("cspdensenet_bc100", num_classes=10)
    >>> with tempfile.TemporaryDirectory() as d:
    ...     result = export_model(model, "torchscript", os.path.join(d, "m.pt"), img_size=32)
    >>> result.check_batch != result.export_batch, result.max_rel_diff < 1e-5
    (True, True)
    """
    import tempfile

    writers = {"onnx": export_onnx, "torchscript": export_torchscript}
    if fmt not in writers:
        raise ValueError(f"format {fmt!r} is not supported: expected one of {', '.join(EXPORT_FORMATS)}")
    if check_batch == export_batch:
        raise ValueError("check_batch must differ from export_batch: the check proves the batch axis is dynamic")
    if int8_calibration is not None and fmt != "onnx":
        raise ValueError(f"int8 quantisation writes ONNX files, not {fmt}: use format 'onnx'")
    model = model.eval()
    info = (info or _model_info(model, img_size, in_chans)).with_(img_size=img_size, precision="fp32")
    python_info = info  # what the reference computation is fed: float NCHW, normalised in Python
    deployable = optimize_for_inference(model, channels_last=False) if optimize else model
    names = {"input_name": "input", "output_name": "logits"} if fmt == "onnx" else {}
    if preprocessing_in_graph:
        deployable = PreprocessingInGraph(deployable, info.mean, info.std)
        info = info.with_(input_format="uint8_nhwc", output="probabilities")
        names = {"input_name": "image", "output_name": "probabilities"} if fmt == "onnx" else {}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="cspnet-export-") as tmp:
        fp32_path = Path(tmp) / "fp32.onnx" if int8_calibration is not None else path
        writers[fmt](deployable, fp32_path, _example_batch(info, export_batch), metadata=info.to_metadata(),
                     **names, **options)  # type: ignore[operator]  # fmt: skip
        fp32_bytes = fp32_path.stat().st_size
        if int8_calibration is not None:
            from cspnet.export.quantize import DEFAULT_CALIBRATION_IMAGES, quantize_int8

            calibration_images = calibration_images or DEFAULT_CALIBRATION_IMAGES
            quantize_int8(fp32_path, path, info, int8_calibration, count=calibration_images)
            info = info.with_(precision="int8")

    def reference(batch: Tensor) -> Tensor:
        with torch.no_grad():
            if not preprocessing_in_graph:
                return model(batch)
            return model(python_info.preprocess(batch.permute(0, 3, 1, 2))).softmax(dim=1)

    x = _example_batch(info, check_batch, seed=1)
    expected, got = reference(x), load_runner(path, fmt)(x)
    agreement, checked = None, 0
    if int8_calibration is not None:
        from cspnet.export.quantize import sample_images

        images = sample_images(int8_calibration, img_size, agreement_images, held_out=True,
                               calibration_count=calibration_images or 0)  # fmt: skip
        batch = info.preprocess(images)
        agreement = float((reference(batch).argmax(1) == load_runner(path, fmt)(batch).argmax(1)).float().mean())
        checked = len(images)
    return ExportResult(
        path=path,
        format=fmt,
        export_batch=export_batch,
        check_batch=check_batch,
        max_abs_diff=(expected - got).abs().max().item() if expected.shape == got.shape else float("inf"),
        max_rel_diff=relative_difference(expected, got),
        precision=info.precision,
        preprocessing_in_graph=preprocessing_in_graph,
        file_bytes=path.stat().st_size,
        fp32_file_bytes=fp32_bytes,
        top1_agreement=agreement,
        agreement_images=checked,
        calibration=f"{calibration_images} images of {int8_calibration}" if int8_calibration else "",
    )
