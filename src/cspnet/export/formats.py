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

Files are self-describing: given a :class:`~cspnet.metadata.ModelInfo` (class names, input size,
resize rule, mean and std), :func:`export_model` writes it into the ONNX ``metadata_props`` or the
TorchScript archive's extra file ``cspnet.json`` (both through :mod:`cspnet.metadata`);
:func:`cspnet.inference.load_model` reads it back. ``preprocessing_in_graph=True`` puts the
normalisation and the softmax in the graph (uint8 NHWC pixels in, probabilities out), and
``int8_calibration=`` quantises the ONNX file (:mod:`cspnet.export.quantize`).

Nothing half-done is left at the output path (:func:`cspnet.io.write_checked`): the file is written
to a temporary file beside it, checked, and moved into place only when the check passes (with
``tolerance=``, a file that does not reproduce PyTorch is not kept). TorchScript is serialised in
memory and written by Python, so a full disk is an ``OSError`` naming the file, not an abort inside
torch's C++ writer.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor, nn

from cspnet.export.fold import optimize_for_inference
from cspnet.io import atomic_path, atomic_write, write_checked
from cspnet.metadata import check_img_size, torchscript_extra_files, write_onnx_metadata

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
    """Write ``model`` as ONNX with a dynamic batch axis (input ``input`` / output ``logits`` by default).

    Written atomically: an exporter error or a full disk leaves ``path`` as it was.
    """
    path = Path(path)
    model = model.eval()
    with atomic_path(path) as tmp:
        _export_onnx(model, tmp, example, opset, exporter, input_name, output_name)
        if metadata:
            write_onnx_metadata(tmp, metadata)
    return path


def _export_onnx(model: nn.Module, path: Path, example: Tensor, opset: int, exporter: str, input_name: str,
                 output_name: str) -> None:  # fmt: skip
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


def export_torchscript(
    model: nn.Module,
    path: str | os.PathLike[str],
    example: Tensor,
    *,
    method: Literal["script", "trace"] = "script",
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write ``model`` as a frozen TorchScript archive (``torch.jit.load`` reads it back).

    ``metadata`` is stored as the archive's extra file ``cspnet.json``. The archive is serialised
    in memory, then written atomically by Python: torch's C++ file writer aborts the whole process
    on a full disk (``terminate called after throwing an instance of 'c10::Error'``).
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
        buffer = io.BytesIO()
        torch.jit.save(module, buffer, _extra_files=torchscript_extra_files(metadata))
    return atomic_write(path, lambda f: f.write(buffer.getbuffer()))


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
    int8_engine: str = "onnxruntime",
    agreement_images: int = 256,
    tolerance: float | None = None,
    **options: str,
) -> ExportResult:
    """Export ``model`` to ``path`` and compare the file's outputs with PyTorch's at ``check_batch``.

    The reference is ``model.eval()`` itself (not the folded copy), so the comparison covers the
    folding too. ``info`` (default: class indices, ImageNet statistics) is written into the file;
    it must name one class per model output. ``preprocessing_in_graph``: the file takes
    ``uint8 (N, H, W, C)`` pixels and returns probabilities; the reference is then PyTorch with the
    Python preprocessing and a softmax. ``int8_calibration`` (``"digits"`` or an image folder; ONNX
    only): the file is int8, calibrated on ``calibration_images`` images of it, and compared on
    ``agreement_images`` others; ``int8_engine`` is the engine it is made for
    (:func:`cspnet.export.quantize.activation_scheme`). ``tolerance``: the largest relative difference accepted; a file
    beyond it (or NaN) is not kept at ``path`` and the ``ValueError`` says by how much it missed.
    ``options`` go to the format's exporter (``exporter=`` for ONNX, ``method=`` for TorchScript).
    Raises ``ValueError`` for an unknown format or an ``img_size`` beyond
    :data:`~cspnet.metadata.MAX_IMG_SIZE`; the file is written atomically
    (:func:`cspnet.io.write_checked`).

    >>> import tempfile, os
    >>> from cspnet.models import create_model
    >>> model = create_model("cspdensenet_bc100", num_classes=10)
    >>> with tempfile.TemporaryDirectory() as d:
    ...     result = export_model(model, "torchscript", os.path.join(d, "m.pt"), img_size=32, tolerance=1e-4)
    >>> result.check_batch != result.export_batch, result.max_rel_diff < 1e-5
    (True, True)
    """
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"format {fmt!r} is not supported: expected one of {', '.join(EXPORT_FORMATS)}")
    if check_batch == export_batch:
        raise ValueError("check_batch must differ from export_batch: the check proves the batch axis is dynamic")
    if int8_calibration is not None and fmt != "onnx":
        raise ValueError(f"int8 quantisation writes ONNX files, not {fmt}: use format 'onnx'")
    check_img_size(img_size, model, what="img_size")  # before anything the size of an image is allocated
    model = model.eval()
    info = (info or _model_info(model, img_size, in_chans)).with_(img_size=img_size, precision="fp32")
    job = _ExportJob(model, fmt, Path(path), info, preprocessing_in_graph, optimize, export_batch, check_batch,
                     int8_calibration, calibration_images or None, agreement_images, tolerance, options,
                     int8_engine=int8_engine)  # fmt: skip
    result = write_checked(job.path, job.write, job.check)
    assert result is not None
    return result


@dataclass
class _ExportJob:
    """One :func:`export_model` call: :meth:`write` the file, :meth:`check` it against PyTorch."""

    model: nn.Module
    fmt: str
    path: Path  # where the file ends up; write and check see a temporary beside it
    info: ModelInfo  # what PyTorch's reference is fed: float NCHW, normalised in Python
    preprocessing_in_graph: bool
    optimize: bool
    export_batch: int
    check_batch: int
    int8_calibration: str | os.PathLike[str] | None
    calibration_images: int | None
    agreement_images: int
    tolerance: float | None
    options: Mapping[str, str]
    file_info: ModelInfo | None = None  # what the file says it takes: set by write
    fp32_bytes: int = 0
    int8_engine: str = "onnxruntime"

    def reference(self, batch: Tensor) -> Tensor:
        with torch.no_grad():
            if not self.preprocessing_in_graph:
                return self.model(batch)
            return self.model(self.info.preprocess(batch.permute(0, 3, 1, 2))).softmax(dim=1)

    def write(self, tmp: Path) -> None:
        import tempfile

        info = self.info
        deployable = optimize_for_inference(self.model, channels_last=False) if self.optimize else self.model
        names = {"input_name": "input", "output_name": "logits"} if self.fmt == "onnx" else {}
        if self.preprocessing_in_graph:
            deployable = PreprocessingInGraph(deployable, info.mean, info.std)
            info = info.with_(input_format="uint8_nhwc", output="probabilities")
            names = {"input_name": "image", "output_name": "probabilities"} if self.fmt == "onnx" else {}
        # The metadata must describe this graph: one class name per output (checked before writing).
        info.check_output(self.reference(_example_batch(info, 1)), "the model to export")
        writer: Callable[..., Path] = export_onnx if self.fmt == "onnx" else export_torchscript
        with tempfile.TemporaryDirectory(prefix="cspnet-export-") as scratch:
            fp32_path = Path(scratch) / "fp32.onnx" if self.int8_calibration is not None else tmp
            writer(deployable, fp32_path, _example_batch(info, self.export_batch), metadata=info.to_metadata(),
                   **names, **self.options)  # fmt: skip
            self.fp32_bytes = fp32_path.stat().st_size
            if self.int8_calibration is not None:
                from cspnet.export.quantize import DEFAULT_CALIBRATION_IMAGES, quantize_int8

                self.calibration_images = self.calibration_images or DEFAULT_CALIBRATION_IMAGES
                quantize_int8(fp32_path, tmp, info, self.int8_calibration, count=self.calibration_images,
                              engine=self.int8_engine)  # fmt: skip
                info = info.with_(precision="int8")
        self.file_info = info

    def check(self, tmp: Path) -> ExportResult:
        info = self.file_info
        assert info is not None, "write() runs first"
        x = _example_batch(info, self.check_batch, seed=1)
        expected, got = self.reference(x), load_runner(tmp, self.fmt)(x)  # type: ignore[arg-type]
        agreement, checked = None, 0
        if self.int8_calibration is not None:
            from cspnet.export.quantize import sample_images

            images = sample_images(self.int8_calibration, info.img_size, self.agreement_images, held_out=True,
                                   calibration_count=self.calibration_images or 0)  # fmt: skip
            batch = info.preprocess(images)
            run = load_runner(tmp, self.fmt)  # type: ignore[arg-type]
            agreement = float((self.reference(batch).argmax(1) == run(batch).argmax(1)).float().mean())
            checked = len(images)
        result = ExportResult(
            path=self.path, format=self.fmt, export_batch=self.export_batch, check_batch=self.check_batch,
            max_abs_diff=(expected - got).abs().max().item() if expected.shape == got.shape else float("inf"),
            max_rel_diff=relative_difference(expected, got), precision=info.precision,
            preprocessing_in_graph=self.preprocessing_in_graph, file_bytes=tmp.stat().st_size,
            fp32_file_bytes=self.fp32_bytes, top1_agreement=agreement, agreement_images=checked,
            calibration=f"{self.calibration_images} images of {self.int8_calibration}" if self.int8_calibration else "",
        )  # fmt: skip
        if self.tolerance is not None and not result.within(self.tolerance):  # also catches NaN
            raise ValueError(
                f"the exported file does not reproduce PyTorch: relative difference {result.max_rel_diff:.3g} "
                f"exceeds {self.tolerance:g}; nothing was written to {self.path}"
            )
        return result
