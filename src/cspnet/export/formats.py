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
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from cspnet.export.fold import optimize_for_inference

ExportFormat = Literal["onnx", "torchscript"]
EXPORT_FORMATS: tuple[str, ...] = ("onnx", "torchscript")
ONNX_OPSET = 18

Runner = Callable[[Tensor], Tensor]


def _example_input(batch_size: int, img_size: int, in_chans: int, seed: int = 0) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch_size, in_chans, img_size, img_size, generator=gen)


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    example: Tensor,
    *,
    opset: int = ONNX_OPSET,
    exporter: Literal["torchscript", "dynamo"] = "torchscript",
) -> Path:
    """Write ``model`` as ONNX with input ``input`` / output ``logits`` and a dynamic batch axis."""
    path = Path(path)
    model = model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporters' deprecation and tracer notices are not actionable here
        if exporter == "dynamo":
            batch = torch.export.Dim("batch", min=1, max=4096)
            torch.onnx.export(
                model, (example,), str(path), input_names=["input"], output_names=["logits"],
                opset_version=opset, dynamo=True, dynamic_shapes={"x": {0: batch}}, verbose=False,
            )  # fmt: skip
        elif exporter == "torchscript":
            torch.onnx.export(
                model, (example,), str(path), input_names=["input"], output_names=["logits"],
                opset_version=opset, dynamo=False,
                dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            )  # fmt: skip
        else:
            raise ValueError(f"exporter={exporter!r} is invalid: expected 'torchscript' or 'dynamo'")
    return path


def export_torchscript(
    model: nn.Module,
    path: str | os.PathLike[str],
    example: Tensor,
    *,
    method: Literal["script", "trace"] = "script",
) -> Path:
    """Write ``model`` as a frozen TorchScript archive (``torch.jit.load`` reads it back)."""
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
        torch.jit.save(module, str(path))
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
    """What :func:`export_model` wrote and how closely the file reproduces PyTorch."""

    path: Path
    format: str
    export_batch: int
    check_batch: int
    max_abs_diff: float
    max_rel_diff: float

    def summary(self) -> str:
        return (
            f"wrote {self.path} ({self.format}, exported at batch {self.export_batch}); checked at batch "
            f"{self.check_batch}: max |diff| = {self.max_abs_diff:.3g} ({self.max_rel_diff:.3g} relative)"
        )


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
    **options: str,
) -> ExportResult:
    """Export ``model`` to ``path`` and compare the file's outputs with PyTorch's at ``check_batch``.

    The reference is ``model.eval()`` itself (not the folded copy), so the comparison covers the
    folding too. ``options`` go to the format's exporter (``exporter=`` for ONNX, ``method=`` for
    TorchScript). Raises ``ValueError`` for an unknown format.

    >>> import cspnet, tempfile, os
    >>> model = cspnet.create_model("cspdensenet_bc100", num_classes=10)
    >>> with tempfile.TemporaryDirectory() as d:
    ...     result = export_model(model, "torchscript", os.path.join(d, "m.pt"), img_size=32)
    >>> result.check_batch != result.export_batch, result.max_rel_diff < 1e-5
    (True, True)
    """
    writers = {"onnx": export_onnx, "torchscript": export_torchscript}
    if fmt not in writers:
        raise ValueError(f"format {fmt!r} is not supported: expected one of {', '.join(EXPORT_FORMATS)}")
    if check_batch == export_batch:
        raise ValueError("check_batch must differ from export_batch: the check proves the batch axis is dynamic")
    model = model.eval()
    deployable = optimize_for_inference(model, channels_last=False) if optimize else model
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writers[fmt](deployable, path, _example_input(export_batch, img_size, in_chans), **options)
    x = _example_input(check_batch, img_size, in_chans, seed=1)
    with torch.no_grad():
        reference = model(x)
    got = load_runner(path, fmt)(x)
    return ExportResult(
        path=path,
        format=fmt,
        export_batch=export_batch,
        check_batch=check_batch,
        max_abs_diff=(reference - got).abs().max().item() if reference.shape == got.shape else float("inf"),
        max_rel_diff=relative_difference(reference, got),
    )
