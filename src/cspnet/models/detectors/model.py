"""The detector: a registered backbone's feature maps -> a neck -> YOLOv3 heads.

``forward`` returns the raw prediction maps (what a loss and an export need); :meth:`Detector.detect`
decodes them into per-image boxes, scores and labels.

Input sizes: the neck joins maps of strides ``r, 2r, 4r``, so height and width must be multiples of
the coarsest stride (32 for ImageNet backbones). With ``input_padding="pad"`` (default) other sizes
are zero-padded at the bottom and right to the next multiple, which leaves pixel coordinates as
they are (detections are clipped to the unpadded image); ``"error"`` raises instead.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from cspnet.convert.darknet import DarknetLayout
from cspnet.models.backbone import Backbone, FeatureExtractor, FeatureInfo, init_weights
from cspnet.models.detectors.blocks import pad_to_multiple
from cspnet.models.detectors.config import DetectorConfig
from cspnet.models.detectors.darknet import detector_darknet_layout
from cspnet.models.detectors.head import YoloHead, decode
from cspnet.models.detectors.necks import NECK_CLASSES, Neck
from cspnet.ops.postprocess import postprocess
from cspnet.ops.thresholds import PREDICT, Thresholds


def select_levels(info: FeatureInfo, neck: type[Neck], backbone: str) -> list[int]:
    """The backbone levels ``neck`` reads, finest first.

    The three output scales are the deepest level of each of the backbone's three coarsest strides
    (which must double from one to the next); a neck that declares ``finer_levels`` also reads the
    deepest level of that many next finer strides, each a power-of-two step below the next.
    """
    deepest: dict[int, int] = {}
    for i, level in enumerate(info):
        deepest[int(level["reduction"])] = i
    strides = sorted(deepest)
    if len(strides) < 3 or strides[-2] * 2 != strides[-1] or strides[-3] * 2 != strides[-2]:
        raise ValueError(
            f"backbone={backbone!r} cannot feed a 3-scale neck: its feature strides are {strides}, "
            "expected at least three that double (e.g. 8, 16, 32)"
        )
    extra = neck.finer_levels
    if len(strides) < 3 + extra:
        raise ValueError(
            f"neck={neck.name!r} needs a backbone level finer than stride {strides[-3]} (it feeds each scale from "
            f"s-1, s and s+1), but backbone={backbone!r} has strides {strides}; use neck="
            + " or ".join(repr(name) for name, cls in NECK_CLASSES.items() if not cls.finer_levels)
        )
    chosen = strides[len(strides) - 3 - extra :]
    for finer, coarser in zip(chosen[:extra], chosen[1 : extra + 1]):
        ratio = coarser // finer
        if ratio * finer != coarser or ratio & (ratio - 1):
            raise ValueError(f"backbone={backbone!r}: stride {finer} -> {coarser} is not a power-of-two step")
    return [deepest[s] for s in chosen]


class Detector(nn.Module):
    """``backbone`` (a :class:`~cspnet.models.FeatureExtractor`) -> ``neck`` -> ``head``.

    Built through :func:`cspnet.create_model` with a detector name (``cspnet.list_models("*_efm")``).

    >>> import cspnet, torch
    >>> model = cspnet.create_model("cspdensenet_bc40_efm", num_classes=3).eval()
    >>> [tuple(o.shape) for o in model(torch.randn(1, 3, 64, 64))]
    [(1, 24, 16, 16), (1, 24, 8, 8), (1, 24, 4, 4)]
    >>> sorted(model.detect(torch.randn(1, 3, 64, 64))[0])
    ['boxes', 'labels', 'scores']
    """

    def __init__(
        self,
        backbone: FeatureExtractor,
        neck: Neck,
        head: YoloHead,
        anchors: tuple[tuple[float, float], ...],
        strides: list[int],
        input_padding: str = "pad",
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.neck = neck
        self.head = head
        self.num_classes = head.num_classes
        self.strides = list(strides)
        self.max_stride = max(strides)
        self.pad_inputs = input_padding == "pad"
        per_scale = len(anchors) // len(strides)
        grid = torch.tensor(anchors, dtype=torch.float32).reshape(len(strides), per_scale, 2)
        # Not in the state dict: anchors are config, not weights.
        self.register_buffer("anchors", grid, persistent=False)
        self.name: str = ""
        self.config: Any = None

    def forward(self, x: Tensor) -> list[Tensor]:
        """Raw prediction maps, finest scale first: ``(N, A * (5 + num_classes), H / stride, W / stride)``."""
        if self.pad_inputs:
            x = pad_to_multiple(x, self.max_stride)
        elif x.shape[-2] % self.max_stride or x.shape[-1] % self.max_stride:
            raise ValueError(
                "input height and width must be multiples of the detector's stride "
                + str(self.max_stride)
                + " (or build it with input_padding='pad'), got "
                + str(x.shape[-2])
                + "x"
                + str(x.shape[-1])
            )
        return self.head(self.neck(self.backbone(x)))

    def decode(self, outputs: list[Tensor]) -> tuple[Tensor, Tensor]:
        """Raw maps -> ``(boxes (N, K, 4) xyxy input pixels, class scores (N, K, num_classes))``."""
        return decode(outputs, self.get_buffer("anchors"), self.strides, self.num_classes)

    @torch.no_grad()
    def detect(
        self,
        images: Tensor,
        conf_threshold: float = PREDICT.conf_threshold,
        iou_threshold: float = PREDICT.iou_threshold,
        max_detections: int = PREDICT.max_detections,
        max_candidates: int = PREDICT.max_candidates,
    ) -> list[dict[str, Tensor]]:
        """Per image: ``boxes`` (M, 4) xyxy in input pixels, ``scores`` (M,), ``labels`` (M,) after
        :func:`cspnet.ops.postprocess.postprocess` (defaults: :data:`~cspnet.ops.thresholds.PREDICT`);
        the model's train/eval mode is left as it is (call ``eval()`` first)."""
        limits = Thresholds(conf_threshold, iou_threshold, max_detections, max_candidates)  # checks them
        boxes, scores = self.decode(self(images))
        size = [int(images.shape[-2]), int(images.shape[-1])]
        return postprocess(boxes, scores, size, **limits.kwargs())

    def class_layers(self) -> tuple[list[str], int]:
        """The prediction convs (their rows are per anchor and class) and the rows each class has: what a
        weight file for another class count leaves out, with a warning (:func:`cspnet.convert.load_weights`)."""
        names = [f"head.levels.{i}.{len(list(level.children())) - 1}" for i, level in enumerate(self.head.levels)]
        return names, self.head.anchors_per_scale

    def darknet_layout(self) -> DarknetLayout:
        """The layer order of this detector in darknet ``.weights`` files (the one reader asks for it)."""
        return detector_darknet_layout(self.backbone, self.neck, self.head)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.backbone.set_grad_checkpointing(enable)


def build_detector(cfg: DetectorConfig, num_classes: int = 80, in_chans: int = 3) -> Detector:
    """Build the detector ``cfg`` describes, for ``num_classes`` object classes."""
    from cspnet.models.factory import create_model

    if num_classes < 1:
        raise ValueError(f"num_classes={num_classes} is invalid: a detector needs at least one class")
    overrides = dict(cfg.backbone_overrides)
    if cfg.drop_path_rate > 0:
        overrides.setdefault("drop_path_rate", cfg.drop_path_rate)
    full = create_model(cfg.backbone, num_classes=0, in_chans=in_chans, **overrides)
    assert isinstance(full, Backbone)  # DetectorConfig.check rejects detectors as backbones
    backbone = FeatureExtractor(full, select_levels(full.feature_info, cfg.neck_class, cfg.backbone))
    in_chs = backbone.feature_info.channels()
    level_strides = backbone.feature_info.reduction()
    neck = cfg.neck_class(in_chs, level_strides, cfg)
    strides = level_strides[-3:]
    head = YoloHead(neck.out_chs, num_classes, cfg.anchors_per_scale, act=cfg.act, drop_rate=cfg.drop_rate)
    init_weights(neck)
    init_weights(head)
    _init_prediction_biases(head, strides)
    return Detector(backbone, neck, head, cfg.anchors, strides, cfg.input_padding)


@torch.no_grad()
def _init_prediction_biases(head: YoloHead, strides: list[int]) -> None:
    """Start objectness low (about 8 objects per 640x640 image) so early training is not swamped."""
    for level, stride in zip(head.levels, strides):
        pred = list(level.children())[-1]
        assert isinstance(pred, nn.Conv2d) and pred.bias is not None
        if pred.bias.is_meta:
            continue
        bias = pred.bias.view(head.anchors_per_scale, -1)
        bias[:, 4] = math.log(8 / (640 / stride) ** 2)
