"""The detector config: backbone, neck and head choices as one declarative, validated dataclass.

Every field can be overridden through ``create_model(<detector>, **overrides)`` like any model's
config; invalid values and invalid combinations raise ``ValueError`` naming the field.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from cspnet.layers.act import ACTIVATION_NAMES
from cspnet.layers.cross_stage import FUSIONS
from cspnet.models.config import ModelConfig, bounded, one_of, positive_ints
from cspnet.models.detectors.blocks import ConvStack
from cspnet.models.detectors.necks import NECK_CLASSES, NECKS, Neck

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
    neck_partial_ratio: float = bounded(
        0.5, 0.0, 1.0, low_open=True, high_open=True, doc="neck_csp: gamma, the share of each stack's split that bypasses it"
    )
    neck_fusion: str = one_of(
        "csp", FUSIONS, doc="neck_csp: the stacks' partial transition (csp: T, concat, U; fusion_first; fusion_last)"
    )
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
    def neck_class(self) -> type[Neck]:
        """The neck this config builds (what it declares: finer levels, Maxout default, fusion sources)."""
        return NECK_CLASSES[self.neck]

    @property
    def maxout_size(self) -> int:
        """The Maxout factor in effect: ``maxout``, or the neck's default when it is ``None``."""
        if self.maxout is None:
            return self.neck_class.default_maxout
        return self.maxout

    @property
    def conv_stack(self) -> ConvStack:
        """How the neck makes its conv stacks (plain, or CSP stages planned by the stage factory)."""
        return ConvStack(self.stack_convs, self.act, self.neck_csp, self.neck_partial_ratio, self.neck_fusion)

    def replace(self, **overrides: Any) -> DetectorConfig:
        """As :meth:`ModelConfig.replace`; another ``backbone`` without new ``backbone_overrides`` keeps
        only the overrides that the new backbone's config has (a registered detector tunes its own
        backbone: ``small_input=False`` means nothing to CSPPeleeNet)."""
        if "backbone" in overrides and "backbone_overrides" not in overrides and overrides["backbone"] != self.backbone:
            fields = _backbone_fields(overrides["backbone"])
            if fields is not None:
                overrides["backbone_overrides"] = tuple(p for p in self.backbone_overrides if p[0] in fields)
        return super().replace(**overrides)

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
        fields = _backbone_fields(self.backbone) or []
        unknown = sorted(name for name, _ in self.backbone_overrides if name not in fields)
        if unknown:
            raise ValueError(
                f"backbone_overrides {', '.join(unknown)} invalid for backbone={self.backbone!r}: its config fields "
                f"are {', '.join(fields)}"
            )

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
        self._check_stacks()
        sources = self.neck_class.fusion_sources(self)
        if self.maxout and not sources:
            users = " or ".join(f"neck={name!r}" for name, cls in NECK_CLASSES.items() if cls.default_maxout)
            raise ValueError(f"maxout={self.maxout} is only used by {users} (neck={self.neck!r}): leave it unset")
        if self.maxout_size > 1:
            for i, widths in enumerate(sources):
                if sum(widths) % self.maxout_size:
                    raise ValueError(
                        f"maxout={self.maxout_size} does not divide the {sum(widths)} channels neck={self.neck!r} "
                        f"concatenates at scale {i} ({' + '.join(map(str, widths))}, from neck_widths[{i}]="
                        f"{self.neck_widths[i]}); choose widths or maxout to fit"
                    )

    def _check_stacks(self) -> None:
        if not self.neck_csp:
            defaults = {f.name: f.default for f in dataclasses.fields(self)}
            for name in ("neck_partial_ratio", "neck_fusion"):
                if getattr(self, name) != defaults[name]:
                    raise ValueError(f"{name}={getattr(self, name)!r} is only used with neck_csp=True: set neck_csp=True")
            return
        for width in self.neck_widths:  # the stage factory's own checks, before anything is built
            self.conv_stack.plan(width, width)


def _backbone_fields(name: str) -> list[str] | None:
    """The config fields of the registered backbone ``name`` (``None``: no such model)."""
    from cspnet.models.registry import get_model_entry, list_models

    if name not in list_models():
        return None
    return get_model_entry(name).config.field_names()
