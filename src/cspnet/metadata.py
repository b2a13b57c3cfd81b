"""What a deployed model needs to be fed correctly, stored inside the exported file, and checked.

An exported file is self-describing: its ONNX ``metadata_props`` (or a TorchScript archive's extra
file ``cspnet.json``) hold the class names, the input side, the resize rule, the normalisation and
the input/output conventions, so whoever runs it needs nothing else. This module is the one place
that writes and reads that metadata, for the exporters (:mod:`cspnet.export`) and the engines
(:mod:`cspnet.inference`) alike.

A file may have been edited or come from elsewhere, so nothing read back is trusted: every field is
checked on its own (a finite mean, a finite positive std, an input side within :data:`MAX_IMG_SIZE`,
known task, precision, input format and output kind) and against the graph it describes
(:meth:`ModelInfo.check_graph`: input shape and type, one class name per output). Each problem is
a one-line ``ValueError`` naming the file and the field.

>>> info = ModelInfo("cspdensenet_bc40", ("0", "1"), img_size=16, mean=(0.5,) * 3, std=(0.25,) * 3)
>>> ModelInfo.from_metadata(info.to_metadata()) == info
True
>>> info.to_metadata()["class_names"], info.to_metadata()["input_format"]
('["0", "1"]', 'float32_nchw')
>>> ModelInfo.from_metadata({**info.to_metadata(), "std": "[0.25, NaN, 0.25]"}, source="m.onnx")
Traceback (most recent call last):
...
ValueError: m.onnx has invalid cspnet metadata: std [0.25, nan, 0.25] is invalid: every value must be finite and positive
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from cspnet.precision import PRECISIONS

if TYPE_CHECKING:
    from torch import Tensor

# The largest input side accepted anywhere (CLI flags, checkpoints, exported files, export itself):
# a 4096^2 RGB batch of one is already 200 MB as float32, and no registered model is meant for more.
MAX_IMG_SIZE = 4096
# The normalisation of a model whose training recorded none (ImageNet's RGB statistics).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

InputFormat = Literal["float32_nchw", "uint8_nhwc"]
OutputKind = Literal["logits", "probabilities"]

TASKS = ("classification",)  # what load_model runs; detectors export through `cspnet detect export`
INPUT_FORMATS: dict[str, str] = {
    "float32_nchw": "float32 (N, C, H, W), RGB, already normalised: (pixel / 255 - mean) / std",
    "uint8_nhwc": "uint8 (N, H, W, C), RGB pixels 0..255, as decoded (normalisation is in the graph)",
}
OUTPUT_KINDS = ("logits", "probabilities")
RESIZE_RULES: dict[str, str] = {
    "stretch_bilinear": "convert to RGB, resize the whole image to img_size x img_size, bilinear, no crop",
    "short_side_centre_crop": "convert to RGB, resize the short side to floor(img_size / crop_pct) (bilinear), "
    "keep the centre img_size x img_size square (timm's crop_pct)",
}
METADATA_VERSION = "1"
TORCHSCRIPT_METADATA = "cspnet.json"  # the extra file of a TorchScript archive that holds the metadata
MAX_IN_CHANS = 64  # more input channels than any image format has: a corrupted field, not a model
# How far from 1 a row of probabilities may sum, by the precision the graph computes in: a float32
# softmax is exact to ~1e-6, a bf16 one to ~1e-2; an int8 softmax rounds each probability to a step
# of at most 1/255 (half a step of error each), so its sum may be off by up to classes / 510.
PROBABILITY_TOLERANCE: dict[str, float] = {"fp32": 1e-3, "bf16": 2e-2, "fp16": 2e-2}
INT8_STEP = 1 / 255


def _short(value: object, limit: int = 80) -> str:
    """``repr(value)`` cut to one short line, for error messages about untrusted values."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_img_size(size: Any, model: Any = None, what: str = "--img-size") -> None:
    """Raise ``ValueError`` unless ``size`` is an integer side from the model's stride to :data:`MAX_IMG_SIZE`
    and, for a detector (``model.max_stride``: its neck joins maps of three strides), a multiple of that stride.

    ``model`` (optional) is anything with timm's ``feature_info`` (a list of ``{"reduction": stride}``) or a
    ``max_stride``.

    >>> check_img_size(100000)
    Traceback (most recent call last):
    ...
    ValueError: --img-size 100000 is too large: at most 4096
    """
    if not isinstance(size, int) or isinstance(size, bool):
        raise ValueError(f"{what} {_short(size)} is invalid: expected a positive integer")
    if size < 1:
        raise ValueError(f"{what} {size} is invalid: expected a positive integer")
    if size > MAX_IMG_SIZE:
        raise ValueError(f"{what} {size} is too large: at most {MAX_IMG_SIZE}")
    if model is None:
        return
    name = getattr(model, "name", "") or type(model).__name__
    multiple = getattr(model, "max_stride", None)
    if isinstance(multiple, int) and size % multiple:
        below, above = size // multiple * multiple, -(-size // multiple) * multiple
        hint = f"{below} or {above}" if below else str(above)
        raise ValueError(f"{what} {size} is invalid for {name}: a detector's input side is a multiple of its "
                         f"stride {multiple} (e.g. {hint})")  # fmt: skip
    info = getattr(model, "feature_info", None)
    if info:
        stride = max(f["reduction"] for f in info)
        if size < stride:
            raise ValueError(
                f"{what} {size} is too small for {name}: its feature map would vanish "
                f"(total stride {stride}); use at least {stride}"
            )


def _finite_numbers(name: str, values: object, count: int, positive: bool = False) -> None:
    if not isinstance(values, tuple) or len(values) != count:
        raise ValueError(f"{name} {_short(values)} is invalid: expected {count} numbers, one per input channel")
    good = all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and (v > 0 or not positive)
        for v in values
    )
    if not good:
        kind = "finite and positive" if positive else "finite"
        raise ValueError(f"{name} {_short(list(values))} is invalid: every value must be {kind}")


def _one_of(name: str, value: object, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} {_short(value)} is invalid: expected one of {', '.join(allowed)}")


@dataclass(frozen=True)
class GraphSignature:
    """What a graph says about its first input and first output; ``None`` where it does not say.

    ``input_dims`` / ``output_dims``: one entry per axis, ``None`` for a dynamic one (the batch);
    ``input_type``: ``"float32"``, ``"uint8"`` or another element type's name.
    """

    input_dims: tuple[int | None, ...] | None = None
    input_type: str | None = None
    output_dims: tuple[int | None, ...] | None = None


@dataclass(frozen=True)
class ModelInfo:
    """The input/output contract of a model: what ``cspnet predict`` needs besides the weights."""

    model_name: str
    class_names: tuple[str, ...]
    img_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    in_chans: int = 3
    task: str = "classification"
    resize: str = "stretch_bilinear"
    crop_pct: float | None = None  # with resize "short_side_centre_crop": the fraction kept (see RESIZE_RULES)
    input_format: InputFormat = "float32_nchw"
    output: OutputKind = "logits"
    precision: str = "fp32"

    def __post_init__(self) -> None:
        if not isinstance(self.model_name, str) or not self.model_name:
            raise ValueError(f"model_name {_short(self.model_name)} is invalid: expected a model name")
        names = self.class_names
        if not isinstance(names, tuple) or not names or not all(isinstance(c, str) for c in names):
            raise ValueError(f"class_names {_short(names)} is invalid: expected a non-empty list of names")
        check_img_size(self.img_size, what="img_size")
        if not isinstance(self.in_chans, int) or isinstance(self.in_chans, bool) or not 1 <= self.in_chans <= MAX_IN_CHANS:
            raise ValueError(f"in_chans {_short(self.in_chans)} is invalid: expected an integer from 1 to {MAX_IN_CHANS}")
        _finite_numbers("mean", self.mean, self.in_chans)
        _finite_numbers("std", self.std, self.in_chans, positive=True)
        _one_of("task", self.task, TASKS)
        _one_of("resize", self.resize, tuple(RESIZE_RULES))
        if (self.resize == "short_side_centre_crop") != (self.crop_pct is not None):
            raise ValueError(f"resize {self.resize!r} with crop_pct {self.crop_pct}: a crop_pct goes with "
                             "'short_side_centre_crop' only")  # fmt: skip
        crop = self.crop_pct
        if crop is not None and (isinstance(crop, bool) or not isinstance(crop, int | float) or not 0 < crop <= 1):
            raise ValueError(f"crop_pct {_short(crop)} is invalid: expected a fraction in (0, 1]")
        _one_of("input_format", self.input_format, tuple(INPUT_FORMATS))
        _one_of("output", self.output, OUTPUT_KINDS)
        _one_of("precision", self.precision, PRECISIONS)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """The shape of one input image, in :attr:`input_format`'s layout."""
        if self.input_format == "uint8_nhwc":
            return (self.img_size, self.img_size, self.in_chans)
        return (self.in_chans, self.img_size, self.img_size)

    @property
    def input_type(self) -> str:
        """The element type of the input batch: ``"uint8"`` or ``"float32"``."""
        return "uint8" if self.input_format == "uint8_nhwc" else "float32"

    @classmethod
    def resize_fields(cls, crop_pct: float | None) -> dict[str, object]:
        """The ``resize`` / ``crop_pct`` fields of an evaluation resize (``None``: stretch, no crop)."""
        if crop_pct is None:
            return {"resize": "stretch_bilinear", "crop_pct": None}
        return {"resize": "short_side_centre_crop", "crop_pct": float(crop_pct)}

    def with_(self, **changes: object) -> ModelInfo:
        """A copy with ``changes`` (e.g. ``precision="int8"``)."""
        return replace(self, **changes)  # type: ignore[arg-type]

    # --- preprocessing ----------------------------------------------------------------------------

    def preprocess(self, images_uint8: Tensor) -> Tensor:
        """Decoded ``uint8 (N, C, H, W)`` images at ``img_size`` -> the model's input batch.

        Normalised float32 NCHW for a plain model; uint8 NHWC for a graph that normalises itself.
        """
        import torch

        if images_uint8.dtype != torch.uint8 or images_uint8.dim() != 4:
            raise ValueError(f"expected uint8 images (N, C, H, W), got {images_uint8.dtype} {tuple(images_uint8.shape)}")
        if self.input_format == "uint8_nhwc":
            return images_uint8.permute(0, 2, 3, 1).contiguous()
        mean = torch.tensor(self.mean, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(1, -1, 1, 1)
        return (images_uint8.float() / 255.0 - mean) / std

    # --- against the graph --------------------------------------------------------------------------

    def check_graph(self, graph: GraphSignature, source: str) -> None:
        """``ValueError`` when the graph's declared input or output contradicts this metadata.

        Axes the graph leaves dynamic are not checked here; :meth:`check_output` checks what the
        graph returns once it has run.
        """
        expected = (None, *self.input_shape)
        dims = graph.input_dims
        if dims is not None and (
            len(dims) != 4 or any(d is not None and e is not None and d != e for d, e in zip(dims, expected))
        ):
            raise ValueError(
                f"{source}: its metadata (img_size {self.img_size}, in_chans {self.in_chans}, input_format "
                f"{self.input_format}) says the input is (N, {', '.join(map(str, self.input_shape))}), but the graph "
                f"takes {_dims(dims)}: the metadata does not belong to this graph"
            )
        if graph.input_type is not None and graph.input_type != self.input_type:
            raise ValueError(
                f"{source}: its metadata (input_format {self.input_format}) says the input is {self.input_type}, "
                f"but the graph takes {graph.input_type}: the metadata does not belong to this graph"
            )
        out = graph.output_dims
        if out is not None and (len(out) != 2 or out[1] not in (None, len(self.class_names))):
            raise ValueError(
                f"{source}: its metadata names {len(self.class_names)} classes but the graph outputs {_dims(out)}: "
                "one class name per output is needed (the metadata does not belong to this graph)"
            )

    def check_output(self, output: Tensor, source: str) -> None:
        """``ValueError`` unless ``output`` (the graph's first output for a batch) fits this metadata:
        one column per class name, and rows that sum to 1 when it says ``output="probabilities"``."""
        if output.dim() != 2 or output.shape[1] != len(self.class_names):
            raise ValueError(
                f"{source}: the graph outputs {_dims(tuple(output.shape))} for a batch of {len(output)}, but its "
                f"metadata names {len(self.class_names)} classes: the metadata does not belong to this graph"
            )
        if self.output == "probabilities" and len(output):
            out = output.float()
            rows = out.sum(dim=1)
            tolerance = PROBABILITY_TOLERANCE.get(self.precision, max(2e-2, out.shape[1] * INT8_STEP))
            in_range = bool(((out >= -0.01) & (out <= 1.01)).all())  # also False for NaN
            if not in_range or not bool(((rows - 1).abs() <= tolerance).all()):
                raise ValueError(
                    f"{source}: its metadata says output=probabilities, but the graph's outputs are not "
                    f"probabilities (values {float(out.min()):.4g} to {float(out.max()):.4g}, a row sums to "
                    f"{float(rows[0]):.4g}): the metadata does not belong to this graph"
                )

    # --- metadata ---------------------------------------------------------------------------------

    def to_metadata(self) -> dict[str, str]:
        """String key/value pairs (ONNX ``metadata_props``); lists are JSON."""
        out = {"cspnet_metadata_version": METADATA_VERSION}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue  # absent: the default (no crop_pct)
            out[f.name] = json.dumps(list(value)) if isinstance(value, tuple) else str(value)
        out["input_description"] = INPUT_FORMATS[self.input_format]
        out["resize_description"] = RESIZE_RULES.get(self.resize, self.resize)
        return out

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, str], source: str = "metadata") -> ModelInfo:
        """Read back what :meth:`to_metadata` wrote; a one-line ``ValueError`` naming ``source`` for
        metadata that is missing, malformed or out of range."""
        if not isinstance(metadata, Mapping):
            raise ValueError(f"{source} has invalid cspnet metadata: expected a mapping, not {type(metadata).__name__}")
        missing = [k for k in ("model_name", "class_names", "img_size", "mean", "std") if k not in metadata]
        if missing:
            raise ValueError(f"{source} has no cspnet metadata (missing {', '.join(missing)})")
        try:
            crop = metadata.get("crop_pct")
            return cls(
                model_name=_text(metadata, "model_name"),
                class_names=tuple(_json_list(metadata, "class_names", str)),
                img_size=_integer(metadata, "img_size"),
                mean=tuple(_json_list(metadata, "mean", float)),
                std=tuple(_json_list(metadata, "std", float)),
                in_chans=_integer(metadata, "in_chans", "3"),
                task=_text(metadata, "task", "classification"),
                resize=_text(metadata, "resize", "stretch_bilinear"),
                crop_pct=None if crop is None else _number(metadata, "crop_pct"),
                input_format=_text(metadata, "input_format", "float32_nchw"),  # type: ignore[arg-type]
                output=_text(metadata, "output", "logits"),  # type: ignore[arg-type]
                precision=_text(metadata, "precision", "fp32"),
            )
        except (ValueError, TypeError, OverflowError, RecursionError) as exc:
            raise ValueError(f"{source} has invalid cspnet metadata: {_one_line(exc)}") from exc


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _dims(dims: tuple[int | None, ...]) -> str:
    return "(" + ", ".join("N" if d is None else str(d) for d in dims) + ")"


def _text(metadata: Mapping[str, Any], key: str, default: str | None = None) -> str:
    value = metadata.get(key, default)
    if not isinstance(value, str):
        raise ValueError(f"{key} {_short(value)} is invalid: expected text")
    return value


def _integer(metadata: Mapping[str, Any], key: str, default: str | None = None) -> int:
    text = _text(metadata, key, default)
    if not text.strip().lstrip("+-").isdigit() or len(text) > 12:
        raise ValueError(f"{key} {_short(text)} is invalid: expected an integer")
    return int(text)


def _number(metadata: Mapping[str, Any], key: str) -> float:
    text = _text(metadata, key)
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{key} {_short(text)} is invalid: expected a number") from None


def _json_list(metadata: Mapping[str, Any], key: str, kind: type) -> list[Any]:
    """A JSON list of strings (``kind=str``) or numbers (``kind=float``), else ``ValueError``."""
    text = _text(metadata, key)
    try:
        values = json.loads(text)
    except ValueError:
        raise ValueError(f"{key} {_short(text)} is invalid: expected a JSON list") from None
    if not isinstance(values, list):
        raise ValueError(f"{key} {_short(text)} is invalid: expected a JSON list")
    if kind is str and not all(isinstance(v, str) for v in values):
        raise ValueError(f"{key} {_short(values)} is invalid: expected a list of names")
    if kind is float:
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            raise ValueError(f"{key} {_short(values)} is invalid: expected a list of numbers")
        return [float(v) for v in values]
    return values


def default_info(
    model_name: str, num_classes: int, img_size: int, *, class_names: Sequence[str] | None = None,
    mean: Sequence[float] | None = None, std: Sequence[float] | None = None, in_chans: int = 3,
) -> ModelInfo:  # fmt: skip
    """A model's contract where no training run recorded one: class indices as names, ImageNet statistics.

    >>> default_info("cspdarknet53", 3, 256).class_names
    ('0', '1', '2')
    """
    names = tuple(class_names) if class_names is not None else tuple(str(i) for i in range(num_classes))
    return ModelInfo(
        model_name=model_name, class_names=names, img_size=img_size, in_chans=in_chans,
        mean=tuple(float(v) for v in (mean if mean is not None else IMAGENET_MEAN)),
        std=tuple(float(v) for v in (std if std is not None else IMAGENET_STD)),
    )  # fmt: skip


# --- in exported files ----------------------------------------------------------------------------


def write_onnx_metadata(path: str | os.PathLike[str], metadata: Mapping[str, str]) -> None:
    """Set ``metadata`` as the ONNX file's ``metadata_props`` (replacing keys of the same name)."""
    import onnx

    proto = onnx.load(str(path))
    kept = {p.key: p.value for p in proto.metadata_props if p.key not in metadata}
    del proto.metadata_props[:]
    for key, value in {**kept, **metadata}.items():
        proto.metadata_props.add(key=key, value=str(value))
    onnx.save(proto, str(path))


def torchscript_extra_files(metadata: Mapping[str, str] | None) -> dict[str, str]:
    """The ``_extra_files`` of ``torch.jit.save`` that carry ``metadata`` (none for no metadata)."""
    return {TORCHSCRIPT_METADATA: json.dumps(dict(metadata))} if metadata else {}


def read_torchscript_info(extra_files: Mapping[str, str | bytes], source: str) -> ModelInfo:
    """The :class:`ModelInfo` in the extra files ``torch.jit.load`` read from ``source``."""
    text = extra_files.get(TORCHSCRIPT_METADATA)
    if not text:
        raise ValueError(f"{source} has no cspnet metadata ({TORCHSCRIPT_METADATA}); re-export it with `cspnet export`")
    try:
        metadata = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"{source} has invalid cspnet metadata ({TORCHSCRIPT_METADATA} is not JSON: {_one_line(exc)})") from exc
    if not isinstance(metadata, dict):
        raise ValueError(f"{source} has invalid cspnet metadata ({TORCHSCRIPT_METADATA} is not a JSON object)")
    return ModelInfo.from_metadata(metadata, source=source)


_ONNX_TYPES = {1: "float32", 2: "uint8", 3: "int8", 6: "int32", 7: "int64", 10: "float16", 11: "float64", 16: "bfloat16"}


def _value_dims(value: Any) -> tuple[int | None, ...] | None:
    tensor = value.type.tensor_type
    if not tensor.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tensor.shape.dim)


def _check_external_data(proto: Any, path: Path) -> None:
    """``ValueError`` for tensors whose external data lies outside the file's folder or is missing.

    onnxruntime and OpenVINO refuse such files too, but through tracebacks; a location is untrusted
    text (``../../etc/passwd``, an absolute path) and is never followed here.
    """
    folder = path.resolve().parent
    for tensor in proto.graph.initializer:
        if tensor.data_location != 1:  # onnx.TensorProto.EXTERNAL
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        target = (folder / location).resolve()
        if not location or Path(location).is_absolute() or not target.is_relative_to(folder):
            raise ValueError(
                f"{path}: tensor {_short(tensor.name)} keeps its data at {_short(location)}, outside the model's "
                "folder: refused (external data must sit beside the .onnx file)"
            )
        if not target.is_file():
            raise ValueError(f"{path}: tensor {_short(tensor.name)} keeps its data in {location}, which does not exist")


def read_onnx_info(path: str | os.PathLike[str]) -> ModelInfo:
    """The :class:`ModelInfo` an ONNX file carries, checked against its graph; ``ValueError`` for a
    file that is not ONNX, whose metadata is invalid or does not fit the graph.

    A file without cspnet metadata (exported elsewhere) gets its input side from the graph, class
    indices as names and ImageNet normalisation, with a warning.
    """
    import logging

    import onnx
    from google.protobuf.message import DecodeError

    path = Path(path)
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except (DecodeError, OSError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{path} is not an ONNX model ({type(exc).__name__}: {_one_line(exc)})") from exc
    if not proto.graph.input or not proto.graph.output:
        raise ValueError(f"{path} is not an ONNX model (no graph inputs or outputs)")
    _check_external_data(proto, path)
    first_in, first_out = proto.graph.input[0], proto.graph.output[0]
    graph = GraphSignature(
        input_dims=_value_dims(first_in),
        input_type=_ONNX_TYPES.get(first_in.type.tensor_type.elem_type, f"type {first_in.type.tensor_type.elem_type}"),
        output_dims=_value_dims(first_out),
    )
    metadata = {p.key: p.value for p in proto.metadata_props}
    if "model_name" in metadata:
        info = ModelInfo.from_metadata(metadata, source=str(path))
        info.check_graph(graph, str(path))
        return info
    dims, out = graph.input_dims or (), graph.output_dims or ()
    if len(dims) != 4 or not dims[2] or dims[2] != dims[3] or not dims[1] or len(out) != 2 or not out[1]:
        raise ValueError(f"{path} has no cspnet metadata and is not a classifier of square images (input {dims})")
    logging.getLogger(__name__).warning(
        "%s has no cspnet metadata: assuming ImageNet normalisation and class indices as names", path
    )
    info = default_info(proto.graph.name or path.stem, out[1], dims[2], in_chans=dims[1])
    info.check_graph(graph, str(path))  # a uint8 or integer input is not what the default assumes
    return info
