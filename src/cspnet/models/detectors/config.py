"""The detector config: backbone, neck and head choices as one declarative, validated dataclass.

Every field can be overridden through ``create_model(<detector>, **overrides)`` like any model's
config; invalid values and invalid combinations raise ``ValueError`` naming the field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cspnet.layers.act import ACTIVATION_NAMES
from cspnet.models.config import ModelConfig, bounded, one_of, positive_ints

NECKS: tuple[str, ...] = ("panet", "fpn", "gfm", "efm")

YOLOV3_ANCHORS: tuple[tuple[float, float], ...] = (
    (10, 13), (16, 30), (33, 23), (30, 61), (62, 45), (59, 119), (116, 90), (156, 198), (373, 326),
)  # fmt: skip
"""The anchors (width, height in input pixels) of yolov3-spp.cfg and the three *-panet-spp.cfg."""


def anchor_field(default: tuple[tuple[float, float], ...], doc: str = "") -> Any:
    """Anchor boxes ``((w, h), ...)`` in input pixels, smallest first, split evenly over the scales."""
    return field(default=default, metadata={"anchors": True, "doc": doc})


@dataclass(frozen=True)
class DetectorConfig(ModelConfig):
    """A YOLO-style detector: a registered backbone's feature maps -> a neck -> YOLOv3 heads.

    Defaults are the PANet-SPP cfgs' neck and head; the backbone name has no default meaning
    outside a registered detector (each registration sets it).
    """

    act: str = one_of("leaky", ACTIVATION_NAMES, doc="activation of every neck and head conv (darknet: leaky 0.1)")
    backbone: str = field(default="cspdarknet53_paper", metadata={"doc": "registered backbone model name"})
    backbone_overrides: tuple[tuple[str, Any], ...] = field(
        default=(), metadata={"doc": "config fields of the backbone, as (name, value) pairs or a dict"}
    )
    neck: str = one_of("panet", NECKS, doc="fpn (YOLOv3), panet (PANet-SPP cfgs), gfm (Fig. 6b) or efm (Fig. 6c)")
    neck_widths: tuple[int, ...] = positive_ints(
        (128, 256, 512), doc="width of the neck at the three output scales, finest first (the cfgs: 128, 256, 512)"
    )
    stack_convs: int = bounded(5, 1, integer=True, doc="convs of each 1x1/3x3 fusion stack (odd; the cfgs: 5)")
    spp: bool = one_of(True, (False, True), doc="SPP block (5/9/13 max pools) on the coarsest level")
    sam: bool = one_of(False, (False, True), doc="spatial attention (SAM) on every neck output")
    maxout: int | None = bounded(
        None,
        0,
        optional=True,
        integer=True,
        doc="EFM: Maxout compresses each concatenation k-fold (0: none; None: 4 for EFM, 0 for other necks)",
    )
    neck_csp: bool = one_of(False, (False, True), doc="the neck's conv stacks as CrossStagePartial stages")
    downsample: str = one_of("conv", ("conv", "maxpool"), doc="stride-2 resampling: 3x3/2 conv or 2x2/2 max pool + 1x1")
    upsample: str = one_of("nearest", ("nearest", "bilinear"), doc="x2 resampling (darknet [upsample]: nearest)")
    anchors: tuple[tuple[float, float], ...] = anchor_field(YOLOV3_ANCHORS, doc="anchor (w, h) in input pixels")
    input_padding: str = one_of(
        "pad", ("pad", "error"), doc="inputs whose sides are not multiples of the stride: zero-pad bottom/right, or error"
    )

    def __post_init__(self) -> None:
        if isinstance(self.backbone_overrides, dict):
            object.__setattr__(self, "backbone_overrides", tuple(sorted(self.backbone_overrides.items())))
        if isinstance(self.anchors, (list, tuple)) and all(isinstance(a, (list, tuple)) for a in self.anchors):
            # `--set anchors=[[10, 13], ...]` gives lists; the config holds tuples.
            object.__setattr__(self, "anchors", tuple(tuple(a) for a in self.anchors))
        super().__post_init__()

    @property
    def num_scales(self) -> int:
        return 3

    @property
    def maxout_size(self) -> int:
        """The Maxout factor in effect: ``maxout``, or the neck's default when it is ``None``."""
        if self.maxout is None:
            return 4 if self.neck == "efm" else 0
        return self.maxout

    @property
    def anchors_per_scale(self) -> int:
        return len(self.anchors) // self.num_scales

    def check(self) -> None:
        self._check_backbone()
        self._check_neck()

    def _check_backbone(self) -> None:
        from cspnet.models.registry import get_model_entry, list_models

        if self.backbone not in list_models():
            get_model_entry(self.backbone)  # raises UnknownModelError (a ValueError) with suggestions
        if isinstance(get_model_entry(self.backbone).config, DetectorConfig):
            raise ValueError(f"backbone={self.backbone!r} is invalid: it is a detector, expected a classification backbone")
        if not isinstance(self.backbone_overrides, tuple) or not all(
            isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str) for p in self.backbone_overrides
        ):
            raise ValueError(f"backbone_overrides={self.backbone_overrides!r} is invalid: expected a dict or (name, value) pairs")

    def _check_neck(self) -> None:
        if len(self.neck_widths) != self.num_scales:
            raise ValueError(f"neck_widths={self.neck_widths!r} is invalid: expected {self.num_scales} widths, finest first")
        if self.stack_convs % 2 == 0:
            raise ValueError(f"stack_convs={self.stack_convs} is invalid: a 1x1/3x3 stack ends on a 1x1, so it is odd")
        anchors = self.anchors
        if (
            not isinstance(anchors, tuple)
            or not anchors
            or len(anchors) % self.num_scales
            or not all(
                isinstance(a, (tuple, list))
                and len(a) == 2
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in a)
                for a in anchors
            )
        ):
            raise ValueError(
                f"anchors={anchors!r} is invalid: expected positive (width, height) pairs, a multiple of "
                f"{self.num_scales} of them (split evenly over the scales, smallest first)"
            )
        if self.maxout and self.neck != "efm":
            raise ValueError(f"maxout={self.maxout} is only used by neck='efm' (neck={self.neck!r}): leave it unset")
        if self.maxout_size > 1:
            # EFM concatenates three maps of the scale's width (two at the coarsest scale).
            for i, width in enumerate(self.neck_widths):
                sources = 2 if i == self.num_scales - 1 else 3
                if (sources * width) % self.maxout_size:
                    raise ValueError(
                        f"maxout={self.maxout_size} does not divide the {sources * width} channels EFM concatenates at "
                        f"scale {i} ({sources} x neck_widths[{i}]={width}); choose widths or maxout to fit"
                    )
