"""What a deployed model needs to be fed correctly, stored inside the exported file.

An exported file is self-describing: its ONNX ``metadata_props`` (or a TorchScript archive's extra
file ``cspnet.json``) hold the class names, the input side, the resize rule, the normalisation and
the input/output conventions, so whoever runs it needs nothing else.

>>> info = ModelInfo("cspdensenet_bc40", ("0", "1"), img_size=16, mean=(0.5,) * 3, std=(0.25,) * 3)
>>> ModelInfo.from_metadata(info.to_metadata()) == info
True
>>> info.to_metadata()["class_names"], info.to_metadata()["input_format"]
('["0", "1"]', 'float32_nchw')
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Literal

import torch
from torch import Tensor

InputFormat = Literal["float32_nchw", "uint8_nhwc"]
OutputKind = Literal["logits", "probabilities"]

INPUT_FORMATS: dict[str, str] = {
    "float32_nchw": "float32 (N, C, H, W), RGB, already normalised: (pixel / 255 - mean) / std",
    "uint8_nhwc": "uint8 (N, H, W, C), RGB pixels 0..255, as decoded (normalisation is in the graph)",
}
RESIZE_RULES: dict[str, str] = {
    "stretch_bilinear": "convert to RGB, resize the whole image to img_size x img_size, bilinear, no crop",
    "short_side_centre_crop": "convert to RGB, resize the short side to floor(img_size / crop_pct) (bilinear), "
    "keep the centre img_size x img_size square (timm's crop_pct)",
}
METADATA_VERSION = "1"


@dataclass(frozen=True)
class ModelInfo:
    """The input/output contract of a model: what ``cspnet predict`` needs besides the weights."""

    model_name: str
    class_names: tuple[str, ...]
    img_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    in_chans: int = 3
    task: str = "classification"  # detectors will add their own task and output decoding
    resize: str = "stretch_bilinear"
    crop_pct: float | None = None  # with resize "short_side_centre_crop": the fraction kept (see RESIZE_RULES)
    input_format: InputFormat = "float32_nchw"
    output: OutputKind = "logits"
    precision: str = "fp32"

    def __post_init__(self) -> None:
        if self.img_size < 1:
            raise ValueError(f"img_size {self.img_size} is invalid: expected a positive integer")
        if len(self.mean) != self.in_chans or len(self.std) != self.in_chans:
            raise ValueError(f"mean and std need {self.in_chans} values each, got {len(self.mean)} and {len(self.std)}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std {self.std} is invalid: every value must be positive")
        if self.resize not in RESIZE_RULES:
            raise ValueError(f"resize {self.resize!r} is invalid: expected one of {', '.join(RESIZE_RULES)}")
        if (self.resize == "short_side_centre_crop") != (self.crop_pct is not None):
            raise ValueError(f"resize {self.resize!r} with crop_pct {self.crop_pct}: a crop_pct goes with "
                             "'short_side_centre_crop' only")  # fmt: skip
        if self.input_format not in INPUT_FORMATS:
            raise ValueError(f"input_format {self.input_format!r} is invalid: expected one of {', '.join(INPUT_FORMATS)}")
        if self.output not in ("logits", "probabilities"):
            raise ValueError(f"output {self.output!r} is invalid: expected 'logits' or 'probabilities'")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """The shape of one input image, in :attr:`input_format`'s layout."""
        if self.input_format == "uint8_nhwc":
            return (self.img_size, self.img_size, self.in_chans)
        return (self.in_chans, self.img_size, self.img_size)

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
        if images_uint8.dtype != torch.uint8 or images_uint8.dim() != 4:
            raise ValueError(f"expected uint8 images (N, C, H, W), got {images_uint8.dtype} {tuple(images_uint8.shape)}")
        if self.input_format == "uint8_nhwc":
            return images_uint8.permute(0, 2, 3, 1).contiguous()
        mean = torch.tensor(self.mean, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(1, -1, 1, 1)
        return (images_uint8.float() / 255.0 - mean) / std

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
        """Read back what :meth:`to_metadata` wrote; ``ValueError`` naming ``source`` if it is not there."""
        missing = [k for k in ("model_name", "class_names", "img_size", "mean", "std") if k not in metadata]
        if missing:
            raise ValueError(f"{source} has no cspnet metadata (missing {', '.join(missing)})")
        try:
            return cls(
                model_name=metadata["model_name"],
                class_names=tuple(str(c) for c in json.loads(metadata["class_names"])),
                img_size=int(metadata["img_size"]),
                mean=tuple(float(v) for v in json.loads(metadata["mean"])),
                std=tuple(float(v) for v in json.loads(metadata["std"])),
                in_chans=int(metadata.get("in_chans", 3)),
                task=metadata.get("task", "classification"),
                resize=metadata.get("resize", "stretch_bilinear"),
                crop_pct=float(metadata["crop_pct"]) if "crop_pct" in metadata else None,
                input_format=metadata.get("input_format", "float32_nchw"),  # type: ignore[arg-type]
                output=metadata.get("output", "logits"),  # type: ignore[arg-type]
                precision=metadata.get("precision", "fp32"),
            )
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{source} has invalid cspnet metadata: {exc}") from exc


def default_info(
    model_name: str, num_classes: int, img_size: int, *, class_names: Sequence[str] | None = None,
    mean: Sequence[float] | None = None, std: Sequence[float] | None = None, in_chans: int = 3,
) -> ModelInfo:  # fmt: skip
    """A model's contract where no training run recorded one: class indices as names, ImageNet statistics.

    >>> default_info("cspdarknet53", 3, 256).class_names
    ('0', '1', '2')
    """
    from cspnet.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    names = tuple(class_names) if class_names is not None else tuple(str(i) for i in range(num_classes))
    return ModelInfo(
        model_name=model_name, class_names=names, img_size=img_size, in_chans=in_chans,
        mean=tuple(float(v) for v in (mean if mean is not None else IMAGENET_MEAN)),
        std=tuple(float(v) for v in (std if std is not None else IMAGENET_STD)),
    )  # fmt: skip

