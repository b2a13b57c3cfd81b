"""ResNe(X)t- and Darknet-style networks and their CSP twins: one config, one builder.

Every stage ``i`` is a :class:`~cspnet.layers.CrossStagePartial` sized by the stage factory
(:func:`~cspnet.layers.plan_stage`)::

    down     3x3/2 conv (groups) to in or out channels   (stride-2 stages with down="conv";
             stage 0 of a ResNet-style stem gets the stem's max pool instead)
    conv_exp 1x1 to exp = out * expand_ratio, split into
             bypass = exp * partial_ratio (first channels) | block path = the rest
             (both multiples of ``groups``: grouped convs read them)
    blocks   depth x residual block (bottleneck or dark; ELASTIC with ``elastic``) as wide as the
             block path (``block_ratio=None``, so any gamma works), or out * block_ratio
    T        1x1, block width -> block width * transition_b_ratio (default 1: keeps the width)
    U        1x1 over [bypass, T] -> out

``fusion`` drops T (``"fusion_first"``) or U (``"fusion_last"``: the stage then puts out
``bypass + T`` channels) as in every family. ``partial_ratio == 0`` gives the plain stage of the
baseline network: ``down -> blocks`` (Darknet-53) or, with ``down="block"``, just the blocks, the
first one strided (darknet's ResNet-50 / ResNeXt-50).

The darknet cfgs build ``conv_exp`` as two parallel 1x1 convs (bypass, then block path); one conv
with the bypass rows first is the same map (the darknet weight reader stacks them). CSPResNe(X)t's
first stage splits unevenly (bypass 128, block path 64 channels): ``expand_ratio`` 1.5 / 0.75 with
``partial_ratio`` 2/3, and its first block joins 64 input to 128 output channels through darknet's
partial-channel shortcut (``shortcut="darknet"``): the one stage whose block width is pinned
(``block_ratio``); every other stage's blocks take the width the split gives them.

With ``elastic=True`` (per stage) every block is an :class:`~cspnet.layers.ElasticBlock`: the
block's convs on each half of its channels, one half at half resolution (the ``*-elastic.cfg``).

>>> import torch
>>> cfg = StageNetConfig(out_chs=(32, 64), depths=(1, 1), strides=(1, 2), expand_ratio=2.0,
...                      partial_ratio=0.5, bottle_ratio=0.5, block_ratio=1.0, split_linear=True)
>>> model = build_stagenet(cfg, num_classes=10)
>>> model(torch.randn(1, 3, 64, 64)).shape, model.feature_info.reduction()
(torch.Size([1, 10]), [2, 4, 8])
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from cspnet.layers import (
    ACTIVATION_NAMES,
    ConvNormAct,
    CrossStagePartial,
    ElasticBlock,
    StagePlan,
    drop_path_rates,
    plan_stage,
)
from cspnet.layers.residual import BLOCKS, SHORTCUTS
from cspnet.models.backbone import Backbone, FeatureInfo, conv_stem, init_weights, resnet_stem
from cspnet.models.config import (
    ModelConfig,
    bounded,
    elastic_pool_field,
    elastic_upsample_field,
    fusion_field,
    one_of,
    positive_ints,
    transition_b_ratio_field,
)
from cspnet.models.registry import ModelEntry, register_model


def per_stage(
    default: Any, low: float, high: float, *, low_open: bool = False, optional: bool = False, doc: str = ""
) -> Any:
    """A per-stage tuple of numbers in ``[low, high]`` (``(low, high]`` with ``low_open``).

    A single number is accepted too and repeated for every stage; ``optional`` also admits ``None``
    (for every stage, or an entry for one stage: a width derived from the others).
    """
    return field(default=default, metadata={"per_stage": (low, high, low_open), "optional": optional, "doc": doc})


def per_stage_flags(default: Any, doc: str = "") -> Any:
    """A per-stage tuple of booleans; a single boolean is repeated for every stage."""
    return field(default=default, metadata={"per_stage": "bool", "doc": doc})


@dataclass(frozen=True)
class StageNetConfig(ModelConfig):
    """ResNe(X)t- / Darknet-style network with optional CSP stages (defaults: timm's cspresnet50)."""

    act: str = one_of("leaky_relu", ACTIVATION_NAMES, doc="activation of every conv block")
    stem: str = one_of(
        "resnet", ("resnet", "darknet"), doc="resnet: 7x7/2 conv + max pool (opens stage 0); darknet: 3x3/1 conv"
    )
    stem_chs: int = bounded(64, 1, integer=True, doc="stem output channels")
    stem_pool: str = one_of(
        "3x3", ("3x3", "2x2"), doc="resnet stem max pool: 3x3/2 pad 1 (timm, torchvision) or 2x2/2 (darknet)"
    )
    out_chs: tuple[int, ...] = positive_ints((128, 256, 512, 1024), doc="output channels per stage")
    depths: tuple[int, ...] = positive_ints((3, 3, 5, 2), doc="residual blocks per stage")
    strides: tuple[int, ...] = positive_ints((1, 2, 2, 2), doc="stride of each stage (1 or 2)")
    down: str = one_of(
        "conv", ("conv", "block"), doc="stride-2 stages open with a 3x3/2 conv, or stride their first block's 3x3"
    )
    down_growth: bool = one_of(False, (False, True), doc="the opening conv widens to out_chs (darknet) or keeps width")
    expand_ratio: tuple[float, ...] = per_stage(2.0, 0.0, 16.0, low_open=True, doc="conv_exp width / out_chs")
    partial_ratio: tuple[float, ...] = per_stage(
        0.5, 0.0, 1.0, doc="gamma: fraction of conv_exp's channels that bypass the blocks (0: plain stage)"
    )
    bottle_ratio: tuple[float, ...] = per_stage(0.5, 0.0, 16.0, low_open=True, doc="block inner width / block width")
    block_ratio: tuple[float | None, ...] | None = per_stage(
        None, 0.0, 16.0, low_open=True, optional=True,
        doc="block width / out_chs (None, for a stage or all: the blocks are as wide as the path the split leaves)",
    )  # fmt: skip
    split_linear: tuple[bool, ...] = per_stage_flags(True, doc="conv_exp without activation (timm's cross_linear)")
    fusion: str = fusion_field()
    transition_b_ratio: float | None = transition_b_ratio_field(1.0)
    groups: int = bounded(1, 1, integer=True, doc="groups of every 3x3 conv (32 for ResNeXt)")
    block: str = one_of("bottleneck", tuple(BLOCKS), doc="residual block type")
    shortcut: str = one_of(
        "identity", SHORTCUTS, doc="identity add, or darknet's parameter-free partial-channel/strided add"
    )
    elastic: tuple[bool, ...] = per_stage_flags(
        False, doc="ELASTIC blocks: half of each block's channels run at half resolution (the -elastic cfgs)"
    )
    elastic_pool: str = elastic_pool_field("max")
    elastic_upsample: str = elastic_upsample_field("nearest")

    @property
    def num_stages(self) -> int:
        return len(self.depths)

    def __post_init__(self) -> None:
        # Broadcast scalars of per-stage fields before the generic checks run.
        for f in self.__dataclass_fields__.values():
            value = getattr(self, f.name)
            if value is None and f.metadata.get("optional"):
                continue
            if "per_stage" in f.metadata and not isinstance(value, (tuple, list)):
                object.__setattr__(self, f.name, (value,) * len(self.depths))
            elif isinstance(value, list):
                object.__setattr__(self, f.name, tuple(value))
        super().__post_init__()

    def check(self) -> None:
        self._check_per_stage_fields()
        if any(s not in (1, 2) for s in self.strides):
            raise ValueError(f"strides={self.strides!r} is invalid: expected 1 or 2 per stage")
        if self.stem == "resnet" and self.strides[0] != 1:
            raise ValueError(
                f"strides={self.strides!r} is invalid: the resnet stem's max pool opens stage 0, so strides[0] must be 1"
            )
        if self.down == "block" and any(p > 0 for p in self.partial_ratio):
            raise ValueError(
                "down='block' (strided first block) is only valid for plain stages: set partial_ratio=0 "
                "or down='conv'"
            )
        if self.down == "block" and any(self.elastic):
            raise ValueError("elastic=True needs down='conv': an ELASTIC block keeps its input's resolution")
        if any(self.elastic) and self.groups > 1 and self.groups % 2:
            raise ValueError(f"groups={self.groups} is invalid with elastic=True: each half takes groups / 2 (use 1 or even)")
        plans = self.stage_plans()  # the stage factory rejects what it cannot build
        if self.shortcut == "identity":
            self._check_identity_shortcuts(plans)
        if self.groups > 1:
            self._check_groups(plans)

    def _check_per_stage_fields(self) -> None:
        """One value per stage in every per-stage field, each within its field's range."""
        n = self.num_stages
        for f in self.__dataclass_fields__.values():
            value = getattr(self, f.name)
            rule = f.metadata.get("per_stage")
            if rule is None and not f.metadata.get("positive_ints") or value is None and f.metadata.get("optional"):
                continue
            if len(value) != n:
                raise ValueError(f"{f.name}={value!r} is invalid: expected {n} values, one per stage (depths)")
            if rule == "bool":
                if not all(isinstance(v, bool) for v in value):
                    raise ValueError(f"{f.name}={value!r} is invalid: expected booleans")
            elif rule is not None:
                low, high, low_open = rule
                for v in value:
                    if v is None and f.metadata.get("optional"):
                        continue
                    ok = isinstance(v, (int, float)) and not isinstance(v, bool)
                    if not ok or not (v > low if low_open else v >= low) or v > high:
                        expected = f"{low} {'<' if low_open else '<='} {f.name} <= {high}"
                        raise ValueError(f"{f.name}={value!r} is out of range: expected {expected} for every stage")

    def stage_plans(self) -> list[StagePlan]:
        """The widths of every stage, from the stage factory (what :func:`build_stagenet` builds)."""
        plans: list[StagePlan] = []
        chs = self.stem_chs
        for i in range(self.num_stages):
            out_chs = self.out_chs[i]
            if self.strides[i] == 2 and self.down == "conv" and self.down_growth:
                chs = out_chs  # the opening 3x3/2 conv widens to the stage width (darknet)
            plan = plan_stage(
                chs,
                self.partial_ratio[i],
                self.block_width(i),
                fusion=self.fusion,
                out_chs=out_chs,
                exp_chs=int(round(out_chs * self.expand_ratio[i])),
                transition_b_ratio=self.transition_b_ratio,
                plain_transition=False,  # a plain ResNet / Darknet stage is its blocks alone
                multiple=self.groups,  # grouped convs read the bypass (next stage's down) and the path
                stage=i,
            )
            plans.append(plan)
            chs = plan.out_chs
        return plans

    def block_width(self, i: int) -> int | Callable[[int], int]:
        """Stage ``i``'s block width: ``out_chs * block_ratio``, or (``None``) the width of the block
        path the split leaves (a function of it, for :func:`~cspnet.layers.plan_stage`)."""
        ratio = None if self.block_ratio is None else self.block_ratio[i]
        if ratio is None:
            return _same_width
        return int(round(self.out_chs[i] * ratio))

    def _check_identity_shortcuts(self, plans: list[StagePlan]) -> None:
        """An identity shortcut needs every first block to keep its input's shape."""
        for i, plan in enumerate(plans):
            stride = self.strides[i]
            if plan.block_in_chs != plan.block_out_chs or (stride == 2 and self.down == "block"):
                raise ValueError(
                    f"stage {i}: its first block maps {plan.block_in_chs} to {plan.block_out_chs} channels "
                    f"(out_chs x block_ratio) at stride {stride if self.down == 'block' else 1}, which "
                    "shortcut='identity' cannot add; set block_ratio=None (blocks as wide as the split leaves "
                    "them), change partial_ratio / expand_ratio / block_ratio or use shortcut='darknet' "
                    "(parameter-free partial-channel add)"
                )

    def _check_groups(self, plans: list[StagePlan]) -> None:
        """Every grouped conv's widths are multiples of its group count (else torch's bare error)."""
        chs = self.stem_chs
        for i, plan in enumerate(plans):
            groups = self.groups
            widths = []
            if self.strides[i] == 2 and self.down == "conv":
                widths += [("its 3x3/2 down conv's input (the previous stage's output)", chs, "out_chs / fusion")]
                widths += [("its 3x3/2 down conv's output", plan.in_chs, "out_chs")]
            block = plan.block_out_chs
            if self.elastic[i]:  # each half of an ELASTIC block: half the width, half the groups
                groups, block = groups // 2, block // 2
            mid = int(round(block * self.bottle_ratio[i]))
            widths += [("its blocks' 3x3 convs (block width x bottle_ratio)", mid, "bottle_ratio / block_ratio")]
            if self.block == "dark":
                widths += [("its blocks' 3x3 output (the block width)", block, "block_ratio / partial_ratio")]
            for what, width, fields in widths:
                if width % groups:
                    raise ValueError(
                        f"groups={self.groups} does not divide stage {i}: {what} is {width} channels wide; "
                        f"change groups or {fields}"
                    )
            chs = plan.out_chs


def _same_width(block_in_chs: int) -> int:
    """A residual stack as wide as its input."""
    return block_in_chs


def _stem(cfg: StageNetConfig, in_chans: int) -> tuple[nn.Module, int, nn.Module | None]:
    """The stem, its stride and the max pool that opens stage 0 (ResNet-style stems)."""
    if cfg.stem == "darknet":
        return conv_stem(in_chans, cfg.stem_chs, 3, 1, cfg.act), 1, None
    stem, pool = resnet_stem(in_chans, cfg.stem_chs, cfg.act, cfg.stem_pool)
    return stem, 2, pool


def _stage(
    cfg: StageNetConfig, i: int, in_chs: int, plan: StagePlan, down: nn.Module | None, dpr: list[float]
) -> CrossStagePartial:
    """Stage ``i`` of ``plan`` (from :meth:`StageNetConfig.stage_plans`), taking ``in_chs`` channels."""
    stride, act = cfg.strides[i], cfg.act
    if stride == 2 and cfg.down == "conv":
        down = ConvNormAct(in_chs, plan.in_chs, 3, stride=2, groups=cfg.groups, act=act)
    block_stride = stride if cfg.down == "block" else 1
    block_cls: Callable[..., nn.Module] = BLOCKS[cfg.block]
    if cfg.elastic[i]:
        block_cls = functools.partial(
            ElasticBlock, kind=cfg.block, pool=cfg.elastic_pool, upsample=cfg.elastic_upsample
        )

    def make_blocks(chs: int) -> nn.Sequential:
        return nn.Sequential(
            *(
                block_cls(
                    chs if j == 0 else plan.block_out_chs,
                    plan.block_out_chs,
                    bottle_ratio=cfg.bottle_ratio[i],
                    stride=block_stride if j == 0 else 1,
                    groups=cfg.groups,
                    act=act,
                    shortcut=cfg.shortcut,
                    drop_path=dpr[j],
                )
                for j in range(cfg.depths[i])
            )
        )

    def make_conv(in_chs: int, out_chs: int, act: str = act) -> nn.Module:
        return ConvNormAct(in_chs, out_chs, 1, act=act)

    split_act = "linear" if cfg.split_linear[i] else act
    return CrossStagePartial.build(
        plan, make_blocks, make_conv, make_exp=functools.partial(make_conv, act=split_act), down=down
    )


def build_stagenet(cfg: StageNetConfig, num_classes: int = 1000, in_chans: int = 3) -> Backbone:
    """Build a ResNe(X)t- / Darknet-style network (CSP or plain stages) from ``cfg``."""
    stem, reduction, stem_pool = _stem(cfg, in_chans)
    feature_info = FeatureInfo([{"num_chs": cfg.stem_chs, "reduction": reduction, "module": "stem"}])
    rates = drop_path_rates(cfg.drop_path_rate, cfg.depths)
    chs = cfg.stem_chs
    stages: list[nn.Module] = []
    for i, plan in enumerate(cfg.stage_plans()):
        stages.append(_stage(cfg, i, chs, plan, stem_pool if i == 0 else None, rates[i]))
        chs = plan.out_chs
        reduction *= cfg.strides[i] * (2 if i == 0 and stem_pool is not None else 1)
        feature_info.append({"num_chs": chs, "reduction": reduction, "module": f"stages.{i}"})
    model = Backbone(stem, stages, feature_info, num_classes, cfg.drop_rate)
    init_weights(model)
    return model


def register_stagenet(name: str, cfg: StageNetConfig, description: str, **kwargs: Any) -> ModelEntry:
    """Register ``name`` as a stagenet model at darknet's / timm's 256x256 input."""
    return register_model(ModelEntry(name, build_stagenet, cfg, description, input_size=(3, 256, 256), **kwargs))


TIMM_URL = "https://huggingface.co/timm/{}/resolve/main/model.safetensors"
"""timm's published ImageNet weights, ``.format("<model>.<tag>")`` (``cspresnet50.ra_in1k``)."""


def timm_figures(params: int) -> dict[str, Any]:
    """timm's published figures: PyTorch parameter count at its 256x256 input."""
    return {"source": "timm", "input": 256, "params": params}


def readme_figures(conv_weights_m: float, bflops: float, top1: float, top5: float) -> dict[str, Any]:
    """The official README's figures: conv weights (millions, as rounded there), BFLOPs at 256, top-1/5."""
    return {
        "source": "paper README",
        "input": 256,
        "conv_weight_params": int(round(conv_weights_m * 1e6)),
        "bflops": bflops,
        "top1": top1,
        "top5": top5,
    }


def cfg_figures(cfg: str, conv_weights: int, bflops: float) -> dict[str, Any]:
    """An official cfg's exact costs at 256 (recomputed from the cfg, spec 2.6): conv weights and BFLOPs."""
    return {"source": f"darknet {cfg}", "input": 256, "conv_weight_params": conv_weights, "bflops": bflops}


def readme_bflops(bflops: float, top1: float, top5: float) -> dict[str, Any]:
    """The official README's figures where it prints no parameter count (the Elastic models)."""
    return {"source": "paper README", "input": 256, "bflops": bflops, "top1": top1, "top5": top5}
