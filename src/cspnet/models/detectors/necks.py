"""Feature-pyramid necks: FPN (YOLOv3), PANet (the CSP *-panet-spp cfgs), GFM and EFM (paper Fig. 6).

Every neck takes the backbone's feature maps finest first and returns three maps (output scales
``s = 0, 1, 2``, strides ``r, 2r, 4r``; ``r = 8`` for ImageNet backbones), finest first. Widths
``w_s`` are ``DetectorConfig.neck_widths``; "stack" is a :class:`~cspnet.models.detectors.blocks.ConvStack`
(``stack_convs`` alternating 1x1 ``w`` / 3x3 ``2w`` convs, or a CSP stage with ``neck_csp``, sized
by the stage factory from ``neck_partial_ratio`` and ``neck_fusion``; a stack puts out ``o_s =
stack.out_chs(w_s)`` channels, ``w_s`` but for ``neck_fusion="fusion_last"``, and every neck wires
those widths through); "down" is a stride-2 resampling (``downsample``: 3x3/2 conv or max pool +
1x1) and "up" a x2 ``upsample`` after a 1x1 conv. ``C_s`` is the backbone map at output scale ``s``
and ``C_-1`` the next finer one (EFM only). See ``docs/detection-models.md`` for the diagrams.

Each neck class declares what it needs, read by the config and the builder before anything is built:
``name`` (its ``neck=`` value; :data:`NECKS` is derived from the classes), ``finer_levels`` (backbone
levels finer than the three output scales it reads), ``default_maxout`` (the Maxout factor when
``maxout`` is unset; 0: no Maxout) and :meth:`Neck.fusion_sources` (the widths each Maxout-compressed
concatenation joins).

``cfg_order`` lists a neck's submodules in darknet cfg order, interleaved with the index of the head
that the cfg places at that point: it is what the darknet weight reader walks.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor, nn

from cspnet.layers import ConvNormAct
from cspnet.models.detectors.blocks import Downsample, SpatialAttention, SppBlock, concat_maxout

if TYPE_CHECKING:
    from cspnet.models.detectors.config import DetectorConfig


def _up(in_chs: int, out_chs: int, cfg: DetectorConfig) -> nn.Sequential:
    """1x1 conv then x2 upsampling (darknet: ``[convolutional] size=1`` + ``[upsample] stride=2``)."""
    return nn.Sequential(ConvNormAct(in_chs, out_chs, 1, act=cfg.act), nn.Upsample(scale_factor=2.0, mode=cfg.upsample))


def _attention(widths: tuple[int, ...], cfg: DetectorConfig) -> nn.ModuleList:
    return nn.ModuleList(SpatialAttention(w) if cfg.sam else nn.Identity() for w in widths)


def _top(in_chs: int, width: int, cfg: DetectorConfig) -> SppBlock:
    return SppBlock(in_chs, width, spp=cfg.spp, stack=cfg.conv_stack)


class Neck(nn.Module):
    """What every neck declares (see the module docstring) and exposes: its output widths
    ``out_chs``, its ``cfg_order`` and SAM on its outputs.

    A neck is built as ``cls(in_chs, strides, cfg)``: the widths and strides of the backbone levels
    it reads (``finer_levels`` finer ones first, then the three output scales), and the config.
    """

    # Python-side metadata that TorchScript need not compile.
    __jit_ignored_attributes__ = ["out_chs", "cfg_order", "name", "finer_levels", "default_maxout"]
    name: ClassVar[str] = ""
    finer_levels: ClassVar[int] = 0
    default_maxout: ClassVar[int] = 0
    out_chs: tuple[int, ...]
    cfg_order: tuple[str | int, ...]
    if TYPE_CHECKING:  # for mypy only: TorchScript cannot read this annotation
        attention: nn.ModuleList

    @classmethod
    def fusion_sources(cls, cfg: DetectorConfig) -> tuple[tuple[int, ...], ...]:
        """Per output scale, the widths of the maps a Maxout-compressed fusion concatenates (none here)."""
        return ()

    def _finish(self, out_chs: tuple[int, ...], cfg: DetectorConfig) -> None:
        self.attention = _attention(out_chs, cfg)
        self.out_chs = out_chs

    def _attend(self, outputs: list[Tensor]) -> list[Tensor]:
        """SAM on each output (identities without ``sam``)."""
        return [att(outputs[i]) for i, att in enumerate(self.attention)]


class FPN(Neck):
    """YOLOv3-SPP's top-down neck (``yolov3-spp.cfg``): each scale fuses itself with the coarser one.

    ::

        P2 = top(C2)                                  (SPP block, or a 5-conv stack)
        P1 = stack1([up(P2), C1])
        P0 = stack0([up(P1), C0])

    YOLOv3 concatenates the upsampled map first and uses no lateral conv on the backbone map.
    """

    name = "fpn"

    def __init__(self, in_chs: list[int], strides: list[int], cfg: DetectorConfig) -> None:
        super().__init__()
        w0, w1, w2 = cfg.neck_widths
        o0, o1, o2 = (cfg.conv_stack.out_chs(w) for w in cfg.neck_widths)
        stack = cfg.conv_stack
        self.top = _top(in_chs[2], w2, cfg)
        self.reduce2 = _up(o2, w1, cfg)
        self.stack1 = stack.build(w1 + in_chs[1], w1)
        self.reduce1 = _up(o1, w0, cfg)
        self.stack0 = stack.build(w0 + in_chs[0], w0)
        self._finish((o0, o1, o2), cfg)
        self.cfg_order = ("top", 2, "reduce2", "stack1", 1, "reduce1", "stack0", 0)

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        c0, c1, c2 = features[0], features[1], features[2]
        p2 = self.top(c2)
        p1 = self.stack1(torch.cat([self.reduce2(p2), c1], dim=1))
        p0 = self.stack0(torch.cat([self.reduce1(p1), c0], dim=1))
        return self._attend([p0, p1, p2])


class PANet(Neck):
    """The neck of ``csresnext50-panet-spp.cfg`` (and the csdarknet53 / csresnet50 twins), exactly.

    ::

        T2 = top(C2)                                   SPP block: 3 convs, SPP, 3 convs
        T1 = td1([lateral1(C1), up(T2)])               lateral: 1x1 to w1
        P0 = td0([lateral0(C0), up(T1)])
        P1 = bu1([down0(P0), T1])                      down: 3x3/2 conv to w1
        P2 = bu2([down1(P1), T2])
    """

    name = "panet"

    def __init__(self, in_chs: list[int], strides: list[int], cfg: DetectorConfig) -> None:
        super().__init__()
        w0, w1, w2 = cfg.neck_widths
        o0, o1, o2 = (cfg.conv_stack.out_chs(w) for w in cfg.neck_widths)
        stack = cfg.conv_stack
        self.top = _top(in_chs[2], w2, cfg)
        self.reduce2 = _up(o2, w1, cfg)
        self.lateral1 = ConvNormAct(in_chs[1], w1, 1, act=cfg.act)
        self.td1 = stack.build(2 * w1, w1)
        self.reduce1 = _up(o1, w0, cfg)
        self.lateral0 = ConvNormAct(in_chs[0], w0, 1, act=cfg.act)
        self.td0 = stack.build(2 * w0, w0)
        self.down0 = Downsample(o0, w1, 1, cfg.downsample, cfg.act)
        self.bu1 = stack.build(w1 + o1, w1)
        self.down1 = Downsample(o1, w2, 1, cfg.downsample, cfg.act)
        self.bu2 = stack.build(w2 + o2, w2)
        self._finish((o0, o1, o2), cfg)
        self.cfg_order = (
            "top", "reduce2", "lateral1", "td1", "reduce1", "lateral0", "td0", 0, "down0", "bu1", 1, "down1", "bu2", 2,
        )  # fmt: skip

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        c0, c1, c2 = features[0], features[1], features[2]
        t2 = self.top(c2)
        t1 = self.td1(torch.cat([self.lateral1(c1), self.reduce2(t2)], dim=1))
        p0 = self.td0(torch.cat([self.lateral0(c0), self.reduce1(t1)], dim=1))
        p1 = self.bu1(torch.cat([self.down0(p0), t1], dim=1))
        p2 = self.bu2(torch.cat([self.down1(p1), t2], dim=1))
        return self._attend([p0, p1, p2])


class GFM(Neck):
    """The global fusion model of Fig. 6(b): merge all scales into one map, then redistribute it.

    ::

        T2 = top(C2)
        G  = fuse([down(C0), lateral(C1), up(T2)])     at scale 1, width w1 each; fuse: 1x1 to w1
        P0 = stack0([lateral0(C0), up(G)])
        P1 = stack1([lateral1(C1), G])
        P2 = stack2([T2, down(G)])
    """

    name = "gfm"

    def __init__(self, in_chs: list[int], strides: list[int], cfg: DetectorConfig) -> None:
        super().__init__()
        w0, w1, w2 = cfg.neck_widths
        o0, o1, o2 = (cfg.conv_stack.out_chs(w) for w in cfg.neck_widths)
        act, stack = cfg.act, cfg.conv_stack
        self.top = _top(in_chs[2], w2, cfg)
        self.gather0 = Downsample(in_chs[0], w1, 1, cfg.downsample, act)
        self.gather1 = ConvNormAct(in_chs[1], w1, 1, act=act)
        self.gather2 = _up(o2, w1, cfg)
        self.fuse = ConvNormAct(3 * w1, w1, 1, act=act)
        self.scatter0 = _up(w1, w0, cfg)
        self.scatter2 = Downsample(w1, w2, 1, cfg.downsample, act)
        self.lateral0 = ConvNormAct(in_chs[0], w0, 1, act=act)
        self.lateral1 = ConvNormAct(in_chs[1], w1, 1, act=act)
        self.stack0 = stack.build(2 * w0, w0)
        self.stack1 = stack.build(2 * w1, w1)
        self.stack2 = stack.build(o2 + w2, w2)
        self._finish((o0, o1, o2), cfg)
        self.cfg_order = (
            "top", "gather0", "gather1", "gather2", "fuse", "scatter0", "scatter2", "lateral0", "lateral1",
            "stack0", 0, "stack1", 1, "stack2", 2,
        )  # fmt: skip

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        c0, c1, c2 = features[0], features[1], features[2]
        t2 = self.top(c2)
        g = self.fuse(torch.cat([self.gather0(c0), self.gather1(c1), self.gather2(t2)], dim=1))
        p0 = self.stack0(torch.cat([self.lateral0(c0), self.scatter0(g)], dim=1))
        p1 = self.stack1(torch.cat([self.lateral1(c1), g], dim=1))
        p2 = self.stack2(torch.cat([t2, self.scatter2(g)], dim=1))
        return self._attend([p0, p1, p2])


class EFMFusion(nn.Module):
    """One fused node of EFM: Maxout over the concatenated inputs (without building the
    concatenation, :func:`~cspnet.models.detectors.blocks.concat_maxout`), then a conv stack."""

    def __init__(self, sources: tuple[int, ...], width: int, cfg: DetectorConfig) -> None:
        super().__init__()
        concat = sum(sources)
        k = cfg.maxout_size
        self.maxout_chs = concat // k if k > 1 else 0
        self.stack = cfg.conv_stack.build(self.maxout_chs or concat, width)

    def extra_repr(self) -> str:
        return f"maxout_chs={self.maxout_chs}" if self.maxout_chs else "no maxout"

    def forward(self, parts: list[Tensor]) -> Tensor:
        if self.maxout_chs:
            return self.stack(concat_maxout(parts, self.maxout_chs))
        return self.stack(torch.cat(parts, dim=1))


class EFM(Neck):
    """The exact fusion model of Fig. 6(c): output scale ``s`` is fed by levels ``s - 1``, ``s``, ``s + 1``.

    Fusion column (top-down), each input brought to ``w_s`` channels at scale ``s``::

        F2 = fuse2([down(C1),  top(C2)])                  top: SPP block with spp, else 1x1
        F1 = fuse1([down(C0),  lateral1(C1), up(F2)])
        F0 = fuse0([down(C-1), lateral0(C0), up(F1)])     C-1: the backbone level finer than C0

    ``fuse``: concatenation -> Maxout (``maxout = k``: every output channel the maximum over ``k``
    channels with stride ``C / k``, so the concatenation shrinks k-fold; computed without building
    the concatenation) -> stack. Prediction column
    (bottom-up, as PANet)::

        P0 = F0;   P1 = bu1([down(P0), F1]);   P2 = bu2([down(P1), F2])

    So ``F_s`` sees backbone levels ``s - 1`` and ``s`` directly and ``s + 1`` through ``F_{s+1}``.
    A finer level more than one octave below ``C0`` (CSPPeleeNet's stride-2 stem under a stride-8
    stage) is brought down by repeated stride-2 steps.
    """

    name = "efm"
    finer_levels = 1
    default_maxout = 4

    @classmethod
    def fusion_sources(cls, cfg: DetectorConfig) -> tuple[tuple[int, ...], ...]:
        w0, w1, w2 = cfg.neck_widths
        top = cfg.conv_stack.out_chs(w2) if cfg.spp else w2
        return (w0, w0, w0), (w1, w1, w1), (w2, top)

    def __init__(self, in_chs: list[int], strides: list[int], cfg: DetectorConfig) -> None:
        super().__init__()
        w0, w1, w2 = cfg.neck_widths
        o0, o1, o2 = (cfg.conv_stack.out_chs(w) for w in cfg.neck_widths)
        sources = self.fusion_sources(cfg)
        act, stack = cfg.act, cfg.conv_stack
        finer, c0, c1, c2 = in_chs
        steps = int(round(math.log2(strides[1] // strides[0])))
        self.top: nn.Module = _top(c2, w2, cfg) if cfg.spp else ConvNormAct(c2, w2, 1, act=act)
        self.finer2 = Downsample(c1, w2, 1, cfg.downsample, act)
        self.fuse2 = EFMFusion(sources[2], w2, cfg)
        self.finer1 = Downsample(c0, w1, 1, cfg.downsample, act)
        self.lateral1 = ConvNormAct(c1, w1, 1, act=act)
        self.coarser1 = _up(o2, w1, cfg)
        self.fuse1 = EFMFusion(sources[1], w1, cfg)
        self.finer0 = Downsample(finer, w0, steps, cfg.downsample, act)
        self.lateral0 = ConvNormAct(c0, w0, 1, act=act)
        self.coarser0 = _up(o1, w0, cfg)
        self.fuse0 = EFMFusion(sources[0], w0, cfg)
        self.down0 = Downsample(o0, w1, 1, cfg.downsample, act)
        self.bu1 = stack.build(w1 + o1, w1)
        self.down1 = Downsample(o1, w2, 1, cfg.downsample, act)
        self.bu2 = stack.build(w2 + o2, w2)
        self._finish((o0, o1, o2), cfg)
        self.cfg_order = (
            "top", "finer2", "fuse2", "finer1", "lateral1", "coarser1", "fuse1", "finer0", "lateral0", "coarser0",
            "fuse0", 0, "down0", "bu1", 1, "down1", "bu2", 2,
        )  # fmt: skip

    def fused(self, features: list[Tensor]) -> list[Tensor]:
        """The fusion column ``[F0, F1, F2]`` (before the bottom-up prediction column)."""
        finer, c0, c1, c2 = features[0], features[1], features[2], features[3]
        f2 = self.fuse2([self.finer2(c1), self.top(c2)])
        f1 = self.fuse1([self.finer1(c0), self.lateral1(c1), self.coarser1(f2)])
        f0 = self.fuse0([self.finer0(finer), self.lateral0(c0), self.coarser0(f1)])
        return [f0, f1, f2]

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        fused = self.fused(features)
        f0, f1, f2 = fused[0], fused[1], fused[2]
        p1 = self.bu1(torch.cat([self.down0(f0), f1], dim=1))
        p2 = self.bu2(torch.cat([self.down1(p1), f2], dim=1))
        return self._attend([f0, p1, p2])


NECK_CLASSES: dict[str, type[Neck]] = {cls.name: cls for cls in (PANet, FPN, GFM, EFM)}
"""Every neck by its ``neck=`` name (PANet first: the default)."""

NECKS: tuple[str, ...] = tuple(NECK_CLASSES)
"""The ``neck`` values a :class:`~cspnet.models.detectors.DetectorConfig` accepts."""
