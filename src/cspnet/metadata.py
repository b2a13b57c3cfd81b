"""What a deployed model needs to be fed correctly, stored inside the exported file, and checked.

An exported file is self-describing: its ONNX ``metadata_props`` (or a TorchScript archive's extra
file ``cspnet.json``) hold the class names, the input side, the resize rule, the normalisation and
the input/output conventions, so whoever runs it needs nothing else. This module is the one place
that writes and reads that metadata, for the exporters (:mod:`cspnet.export`) and the engines
(:mod:`cspnet.inference`) alike.

A detector's file says in the same place how to letterbox (``resize="letterbox"``, the pad value,
the strides whose largest the side is a multiple of), its anchors, whether NMS is inside the graph
(``output="detections"``) or left to the caller (``output="boxes_scores"``), the default
post-processing thresholds and, when its training data had them, the COCO category id of each class.

A file may have been edited or come from elsewhere, so nothing read back is trusted: every field is
checked on its own (a finite mean, a finite positive std, an input side within :data:`MAX_IMG_SIZE`,
known task, precision, input format and output kind; a detector's strides, anchors, pad value,
thresholds and category ids) and against the graph it describes (:meth:`ModelInfo.check_graph`:
input shape and type, one class name per output, a detector's outputs and box count). Each problem
is a one-line ``ValueError`` naming the file and the field.

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

from cspnet.ops.thresholds import PREDICT, Thresholds
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
OutputKind = Literal["logits", "probabilities", "boxes_scores", "detections"]

TASKS = ("classification", "detection")  # what load_model runs
INPUT_FORMATS: dict[str, str] = {
    "float32_nchw": "float32 (N, C, H, W), RGB, already normalised: (pixel / 255 - mean) / std",
    "uint8_nhwc": "uint8 (N, H, W, C), RGB pixels 0..255, as decoded (normalisation is in the graph)",
}
# What the first output(s) of a graph are, by task.
TASK_OUTPUTS: dict[str, tuple[str, ...]] = {
    "classification": ("logits", "probabilities"),
    "detection": ("boxes_scores", "detections"),
}
OUTPUT_KINDS = tuple(kind for kinds in TASK_OUTPUTS.values() for kind in kinds)
OUTPUT_DESCRIPTIONS: dict[str, str] = {
    "boxes_scores": "boxes (N, K, 4) x1, y1, x2, y2 in input pixels and scores (N, K, C) objectness x class "
    "probability, before post-processing (score > conf_threshold, clip, class-aware NMS at iou_threshold, "
    "the best max_detections per image)",
    "detections": "detections (M, 7) rows image index, x1, y1, x2, y2 (input pixels), score, class: "
    "post-processed in the graph with the recorded thresholds",
}
RESIZE_RULES: dict[str, str] = {
    "stretch_bilinear": "convert to RGB, resize the whole image to img_size x img_size, bilinear, no crop",
    "short_side_centre_crop": "convert to RGB, resize the short side to floor(img_size / crop_pct) (bilinear), "
    "keep the centre img_size x img_size square (timm's crop_pct)",
    "letterbox": "convert to RGB, resize by the largest scale that fits img_size x img_size (aspect kept, bilinear, "
    "sides rounded), centre it on an img_size x img_size canvas of pad_value grey (padding split evenly, the odd "
    "pixel right/bottom); boxes map back by subtracting the padding and dividing by the scale",
}
MAX_ANCHORS = 1000  # more anchors than any detector has: a corrupted field
MAX_CATEGORY_ID = 2**31 - 1  # COCO ids are JSON integers; int32 keeps them exact everywhere
LEGACY_PAD_VALUE = 114  # the letterbox grey of detector files written before they recorded it
DETECTION_FIELDS = ("strides", "anchors", "pad_value", "thresholds", "category_ids")
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
    outputs: tuple[tuple[int | None, ...] | None, ...] | None = None  # every output's dims, in order


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
    # Detectors only (``None`` for a classifier): the feature strides (the letterbox side is a multiple
    # of the largest), anchors (w, h) in input pixels, grouped by stride, the letterbox's pad grey, the
    # default post-processing (the baked-in one when output="detections") and COCO category ids.
    strides: tuple[int, ...] | None = None
    anchors: tuple[tuple[float, float], ...] | None = None
    pad_value: int | None = None
    thresholds: Thresholds | None = None
    category_ids: tuple[int, ...] | None = None

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
        _one_of("output", self.output, TASK_OUTPUTS[self.task])
        _one_of("precision", self.precision, PRECISIONS)
        if self.task == "detection":
            self._check_detection()
        else:
            given = [f for f in DETECTION_FIELDS if getattr(self, f) is not None]
            if given or self.resize == "letterbox":
                raise ValueError(f"{', '.join(given) or 'resize letterbox'}: a detector's field, but task is {self.task!r}")

    def _check_detection(self) -> None:
        """The detector fields: letterbox rule, strides, anchors, thresholds, category ids."""
        if self.resize != "letterbox":
            raise ValueError(f"resize {self.resize!r} is invalid for a detector: it takes 'letterbox'")
        if self.input_format != "float32_nchw":
            raise ValueError(f"input_format {self.input_format!r} is invalid for a detector: it takes float32_nchw")
        pad = self.pad_value
        if isinstance(pad, bool) or not isinstance(pad, int) or not 0 <= pad <= 255:
            raise ValueError(f"pad_value {_short(pad)} is invalid: expected a grey level 0..255")
        if not isinstance(self.thresholds, Thresholds):
            raise ValueError(f"thresholds {_short(self.thresholds)} is invalid: expected the post-processing thresholds")
        strides = self.strides
        if strides is not None:
            good = isinstance(strides, tuple) and 0 < len(strides) <= 8 and all(
                isinstance(s, int) and not isinstance(s, bool) and 1 <= s <= MAX_IMG_SIZE for s in strides)  # fmt: skip
            if not good:
                raise ValueError(f"strides {_short(strides)} is invalid: expected 1 to 8 positive integers")
            if self.img_size % max(strides):
                raise ValueError(f"img_size {self.img_size} is invalid for a detector of strides {list(strides)}: "
                                 f"a multiple of {max(strides)} is needed")  # fmt: skip
        self._check_anchors()
        ids = self.category_ids
        if ids is not None:
            good = isinstance(ids, tuple) and all(
                isinstance(i, int) and not isinstance(i, bool) and 0 <= i <= MAX_CATEGORY_ID for i in ids)  # fmt: skip
            if not good or len(ids) != len(self.class_names) or len(set(ids)) != len(ids):
                raise ValueError(f"category_ids {_short(ids)} is invalid: expected one distinct id (0..{MAX_CATEGORY_ID}) "
                                 f"per class ({len(self.class_names)})")  # fmt: skip

    def _check_anchors(self) -> None:
        anchors = self.anchors
        if anchors is None:
            return
        good = isinstance(anchors, tuple) and 0 < len(anchors) <= MAX_ANCHORS and all(
            isinstance(a, tuple) and len(a) == 2 and all(
                isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v > 0 for v in a)
            for a in anchors)  # fmt: skip
        if not good:
            raise ValueError(f"anchors {_short(anchors)} is invalid: expected (width, height) pairs of positive numbers")
        if self.strides is not None and len(anchors) % len(self.strides):
            raise ValueError(f"{len(anchors)} anchors do not split evenly over {len(self.strides)} strides")

    @property
    def boxes_per_image(self) -> int | None:
        """A detector's candidate boxes per image (``K`` of its boxes/scores outputs), when its strides
        and anchors are known."""
        if self.strides is None or self.anchors is None:
            return None
        per_scale = len(self.anchors) // len(self.strides)
        return per_scale * sum((self.img_size // s) ** 2 for s in self.strides)

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
        if self.task == "detection":
            self._check_detector_graph(graph, source)
            return
        out = graph.output_dims
        if out is not None and (len(out) != 2 or out[1] not in (None, len(self.class_names))):
            raise ValueError(
                f"{source}: its metadata names {len(self.class_names)} classes but the graph outputs {_dims(out)}: "
                "one class name per output is needed (the metadata does not belong to this graph)"
            )

    def detector_output_shapes(self, batch: int | None) -> list[tuple[int | None, ...]]:
        """The shapes a detector's outputs must have for ``batch`` images (``None``: any size there).

        >>> from cspnet.ops.thresholds import PREDICT
        >>> info = ModelInfo("d", ("a", "b"), 64, (0.0,) * 3, (1.0,) * 3, task="detection", resize="letterbox",
        ...                  output="boxes_scores", strides=(16, 32), anchors=((4.0, 4.0),) * 2, pad_value=114,
        ...                  thresholds=PREDICT)
        >>> info.detector_output_shapes(1)
        [(1, 20, 4), (1, 20, 2)]
        """
        if self.output == "detections":
            return [(None, 7)]
        k = self.boxes_per_image
        return [(batch, k, 4), (batch, k, len(self.class_names))]

    def _check_detector_graph(self, graph: GraphSignature, source: str) -> None:
        if graph.outputs is None:
            return
        expected = self.detector_output_shapes(None)
        fits = len(graph.outputs) == len(expected) and all(
            got is None or (len(got) == len(want) and all(g is None or w is None or g == w for g, w in zip(got, want)))
            for got, want in zip(graph.outputs, expected))  # fmt: skip
        if not fits:
            shown = ", ".join("?" if o is None else _dims(o) for o in graph.outputs)
            raise ValueError(
                f"{source}: its metadata (output {self.output}, {len(self.class_names)} classes, img_size {self.img_size}"
                f"{f', strides {list(self.strides)}' if self.strides else ''}) says the graph outputs "
                f"{', '.join(_dims(e) for e in expected)}, but it outputs {shown}: the metadata does not belong to this graph"
            )

    def check_outputs(self, outputs: Sequence[Tensor], batch: int, source: str) -> None:
        """``ValueError`` unless ``outputs`` (every output of the graph for ``batch`` images) fit this
        metadata: a classifier's first output as :meth:`check_output` says; a detector's the shapes of
        :meth:`detector_output_shapes`, scores in [0, 1], class ids of its classes."""
        if self.task != "detection":
            self.check_output(outputs[0], source)
            return
        expected = self.detector_output_shapes(batch)
        shapes = [tuple(o.shape) for o in outputs]
        fits = len(shapes) == len(expected) and all(
            len(got) == len(want) and all(w is None or g == w for g, w in zip(got, want))
            for got, want in zip(shapes, expected))  # fmt: skip
        if not fits:
            raise ValueError(
                f"{source}: the graph outputs {', '.join(_dims(s) for s in shapes)} for a batch of {batch}, but its "
                f"metadata (output {self.output}, {len(self.class_names)} classes, img_size {self.img_size}) says "
                f"{', '.join(_dims(e) for e in expected)}: the metadata does not belong to this graph"
            )
        scores = outputs[1] if self.output == "boxes_scores" else outputs[0][:, 5]
        labels = outputs[0][:, 6] if self.output == "detections" else None
        if len(scores.reshape(-1)) and not bool(((scores >= -0.01) & (scores <= 1.01)).all()):
            raise ValueError(f"{source}: its metadata says output={self.output}, but the graph's scores are not in "
                             "[0, 1]: the metadata does not belong to this graph")  # fmt: skip
        if labels is not None and len(labels) and not bool(((labels >= 0) & (labels < len(self.class_names))).all()):
            raise ValueError(f"{source}: the graph's detections name classes beyond the {len(self.class_names)} of its "
                             "metadata: the metadata does not belong to this graph")  # fmt: skip

    def check_output(self, output: Tensor, source: str) -> None:
        """``ValueError`` unless ``output`` (a classifier graph's first output for a batch) fits this metadata:
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
                continue  # absent: the default (no crop_pct, no detector fields)
            if isinstance(value, Thresholds):
                out[f.name] = json.dumps(value.kwargs())
            else:
                out[f.name] = json.dumps(value) if isinstance(value, tuple) else str(value)
        out["input_description"] = INPUT_FORMATS[self.input_format]
        out["resize_description"] = RESIZE_RULES.get(self.resize, self.resize)
        if self.task == "detection":
            out["output_description"] = OUTPUT_DESCRIPTIONS[self.output]
            if self.strides:
                out["letterbox_stride"] = str(max(self.strides))  # for readers: derived from strides, not read back
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
                **_detector_fields(metadata),
            )
        except (ValueError, TypeError, OverflowError, RecursionError) as exc:
            raise ValueError(f"{source} has invalid cspnet metadata: {_one_line(exc)}") from exc


def _detector_fields(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """The detector fields present in ``metadata``, parsed (checked by :class:`ModelInfo`)."""
    found: dict[str, Any] = {}
    if "strides" in metadata:
        found["strides"] = tuple(_integer_list(metadata, "strides"))
    if "anchors" in metadata:
        pairs = _json(metadata, "anchors")
        if not isinstance(pairs, list) or not all(isinstance(p, list) and len(p) == 2 for p in pairs):
            raise ValueError(f"anchors {_short(metadata['anchors'])} is invalid: expected a JSON list of [width, height]")
        found["anchors"] = tuple((_as_number("anchors", w), _as_number("anchors", h)) for w, h in pairs)
    if "pad_value" in metadata:
        found["pad_value"] = _integer(metadata, "pad_value")
    if "thresholds" in metadata:
        values = _json(metadata, "thresholds")
        names = set(PREDICT.kwargs())
        if not isinstance(values, dict) or set(values) != names:
            raise ValueError(f"thresholds {_short(metadata['thresholds'])} is invalid: expected a JSON object with "
                             f"{', '.join(sorted(names))}")  # fmt: skip
        found["thresholds"] = Thresholds(**values)
    if "category_ids" in metadata:
        found["category_ids"] = tuple(_integer_list(metadata, "category_ids"))
    return found


def _json(metadata: Mapping[str, Any], key: str) -> Any:
    text = _text(metadata, key)
    try:
        return json.loads(text)
    except ValueError:
        raise ValueError(f"{key} {_short(text)} is invalid: expected JSON") from None


def _as_number(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{key}: {_short(value)} is not a number")
    return float(value)


def _integer_list(metadata: Mapping[str, Any], key: str) -> list[int]:
    values = _json(metadata, key)
    if not isinstance(values, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise ValueError(f"{key} {_short(metadata[key])} is invalid: expected a JSON list of integers")
    return values


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
        outputs=tuple(_value_dims(o) for o in proto.graph.output),
    )
    metadata = {p.key: p.value for p in proto.metadata_props}
    if "model_name" in metadata:
        info = ModelInfo.from_metadata(metadata, source=str(path))
        info.check_graph(graph, str(path))
        return info
    names = tuple(o.name for o in proto.graph.output)
    if names in (("boxes", "scores"), ("detections",)):
        return _unlabelled_detector(path, proto.graph.name, graph, names)
    dims, out = graph.input_dims or (), graph.output_dims or ()
    if len(dims) != 4 or not dims[2] or dims[2] != dims[3] or not dims[1] or len(out) != 2 or not out[1]:
        raise ValueError(f"{path} has no cspnet metadata and is not a classifier of square images (input {dims})")
    logging.getLogger(__name__).warning(
        "%s has no cspnet metadata: assuming ImageNet normalisation and class indices as names", path
    )
    info = default_info(proto.graph.name or path.stem, out[1], dims[2], in_chans=dims[1])
    info.check_graph(graph, str(path))  # a uint8 or integer input is not what the default assumes
    return info


def _unlabelled_detector(path: Path, name: str, graph: GraphSignature, outputs: tuple[str, ...]) -> ModelInfo:
    """The contract of a detector file written before detector files carried metadata (``cspnet detect
    export`` of cspnet 0.1): its outputs named as that exporter names them, the input side and the
    class count from the graph, pixels in [0, 1] letterboxed on grey 114; a warning says so."""
    import logging

    dims = graph.input_dims or ()
    scores = (graph.outputs or ((),))[-1] or ()
    if len(dims) != 4 or not dims[2] or dims[2] != dims[3] or dims[1] != 3:
        raise ValueError(f"{path} has no cspnet metadata and is not a detector of square RGB images (input {dims})")
    if outputs == ("detections",):
        raise ValueError(f"{path} has no cspnet metadata and NMS inside (its classes and thresholds are unknown): "
                         "re-export it with `cspnet detect export`")  # fmt: skip
    if len(scores) != 3 or not scores[2]:
        raise ValueError(f"{path} has no cspnet metadata and its scores output {scores} names no class count")
    logging.getLogger(__name__).warning(
        "%s has no cspnet metadata: assuming a detector of pixels in [0, 1], letterboxed on grey 114, with class "
        "indices as names (re-export it with `cspnet detect export` to record them)", path
    )
    info = ModelInfo(name or path.stem, tuple(str(i) for i in range(scores[2])), dims[2], (0.0,) * 3, (1.0,) * 3,
                     task="detection", resize="letterbox", output="boxes_scores", pad_value=LEGACY_PAD_VALUE,
                     thresholds=PREDICT)  # fmt: skip
    info.check_graph(graph, str(path))
    return info
