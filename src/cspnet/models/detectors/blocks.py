"""Building blocks of the detection necks: darknet conv units, SPP, Maxout, SAM and conv stacks.

Every conv is the project's :class:`~cspnet.layers.ConvNormAct` (darknet's ``[convolutional]
batch_normalize=1``: conv without bias -> BN -> activation, ``pad=1`` = ``kernel // 2``); the
detection cfgs use ``activation=leaky`` (slope 0.1) for all of them but the prediction convs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from cspnet.layers import ConvNormAct, CrossStagePartial, StagePlan, plan_stage


class SpatialPyramidPooling(nn.Module):
    """YOLOv3-SPP's block: stride-1 max pools of several sizes, concatenated with the input.

    The cfgs route ``[pool 13, pool 9, pool 5, input]`` in that order (``layers=-1,-3,-5,-6``), so
    the output has ``(len(pool_sizes) + 1) * C`` channels at the input's resolution. Darknet pads a
    stride-1 ``[maxpool]`` by ``size - 1`` in total, which is PyTorch's ``padding=size // 2`` with
    ``-inf`` padding for odd sizes.

    >>> SpatialPyramidPooling()(torch.randn(1, 8, 13, 13)).shape
    torch.Size([1, 32, 13, 13])
    """

    def __init__(self, pool_sizes: tuple[int, ...] = (5, 9, 13)) -> None:
        super().__init__()
        if not pool_sizes or any(k < 1 or k % 2 == 0 for k in pool_sizes):
            raise ValueError(f"pool_sizes={pool_sizes!r} is invalid: expected odd positive sizes")
        self.pool_sizes = tuple(pool_sizes)
        # Largest first: the cfgs' route order.
        self.pools = nn.ModuleList(nn.MaxPool2d(k, 1, k // 2) for k in sorted(pool_sizes, reverse=True))

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([pool(x) for pool in self.pools] + [x], dim=1)


class Maxout(nn.Module):
    """Cross-channel max pooling (Maxout, Goodfellow et al. 2013) as darknet's ``maxpool_depth``.

    ``[maxpool] maxpool_depth=1 out_channels=K``: output channel ``g`` is the maximum over input
    channels ``g, g + K, g + 2K, ...`` at every pixel. The groups are *strided*, so when the input is
    a concatenation of ``C / K`` maps of ``K`` channels each, output channel ``g`` is the element-wise
    maximum of channel ``g`` of every map. ``C`` must be a multiple of ``out_chs``.

    >>> x = torch.arange(6.0).reshape(1, 6, 1, 1)   # channels 0..5
    >>> Maxout(2)(x).flatten().tolist()              # max(0, 2, 4), max(1, 3, 5)
    [4.0, 5.0]
    """

    def __init__(self, out_chs: int) -> None:
        super().__init__()
        if out_chs < 1:
            raise ValueError(f"out_chs={out_chs} is invalid: expected at least 1")
        self.out_chs = out_chs

    def extra_repr(self) -> str:
        return f"out_chs={self.out_chs}"

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        if c % self.out_chs:
            raise ValueError(f"Maxout to {self.out_chs} channels needs a multiple of {self.out_chs}, got {c}")
        # (N, C/K, K, H, W): dim 1 walks g, g + K, g + 2K, ... for each g.
        return x.reshape(n, c // self.out_chs, self.out_chs, h, w).amax(dim=1)


def concat_maxout(parts: list[Tensor], out_chs: int) -> Tensor:
    """``Maxout(out_chs)(torch.cat(parts, 1))`` without building the concatenation.

    Group ``j`` of the strided Maxout is channels ``j*K .. (j+1)*K`` of the virtual concatenation
    (``K = out_chs``), which lie in one part or straddle two. Without autograd, the first group is
    copied into the output and every later one folded into it in place, channel range by channel
    range: the only new memory is the ``K``-channel output, a ``k``-th of the concatenation that
    ``Maxout`` would read. With autograd, or while being traced for export, every step is a new
    tensor instead.

    >>> a, b = torch.randn(1, 6, 2, 2), torch.randn(1, 2, 2, 2)
    >>> torch.equal(concat_maxout([a, b], 4), Maxout(4)(torch.cat([a, b], 1)))
    True
    """
    total = 0
    for part in parts:
        total += part.shape[1]
    if total % out_chs:
        raise ValueError(f"Maxout to {out_chs} channels needs a multiple of {out_chs}, got {total}")
    # Not while tracing (jit.trace and the TorchScript-based ONNX export trace the model): a write
    # through a slice view with out= is not recorded, and the file would keep only the first group.
    in_place = not torch.jit.is_tracing() and not any(part.requires_grad for part in parts)
    result = torch.empty(0)
    for group in range(total // out_chs):
        low, high = group * out_chs, (group + 1) * out_chs
        # (slice of a part, its first channel within the group)
        pieces: list[Tensor] = []
        offsets: list[int] = []
        start = 0
        for part in parts:
            width = part.shape[1]
            a, b = max(low, start), min(high, start + width)
            if a < b:
                pieces.append(part[:, a - start : b - start])
                offsets.append(a - low)
            start += width
        if group == 0:
            result = torch.cat(pieces, dim=1) if len(pieces) > 1 else pieces[0].clone()
        elif in_place:
            for piece, offset in zip(pieces, offsets):
                target = result[:, offset : offset + piece.shape[1]]
                torch.maximum(target, piece, out=target)
        else:
            result = torch.maximum(result, torch.cat(pieces, dim=1) if len(pieces) > 1 else pieces[0])
    return result


class SpatialAttention(nn.Module):
    """YOLOv4's SAM (darknet ``[convolutional] activation=logistic`` + ``[sam] from=-2``).

    The input is multiplied, element by element, by a sigmoid map of a conv-BN of itself: a
    point-wise attention with the input's shape (ThunderNet's SAM re-weights by a spatial map; the
    paper does not say which form EFM(SAM) used, this is the one its authors' darknet ships).

    >>> SpatialAttention(8)(torch.randn(1, 8, 5, 5)).shape
    torch.Size([1, 8, 5, 5])
    """

    def __init__(self, chs: int) -> None:
        super().__init__()
        self.attention = ConvNormAct(chs, chs, 1, act="linear")

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(self.attention(x))


@dataclass(frozen=True)
class ConvStack:
    """How a neck makes its conv stacks: YOLOv3's ``num_convs`` alternating 1x1 (``width``) / 3x3
    (``2 * width``) convs ending on a 1x1, or (``csp``) their CSP stage, sized by the stage factory.

    The CSP stage (the CSP neck of Scaled-YOLOv4, in this library's stage class) is planned by
    :func:`~cspnet.layers.plan_stage` like every backbone stage: a 1x1 split conv to ``2 * width``
    whose first ``round(2 * width * partial_ratio)`` channels bypass the blocks; the block path runs
    ``(num_convs - 1) // 2`` pairs of 1x1/3x3 convs at its own width; T (1x1) keeps that width
    (``transition_b_ratio=1``, as in the darknet cfgs); ``fusion`` says which of T and U exist, and U
    (1x1) maps ``[bypass, T]`` to ``width``. With ``fusion="fusion_last"`` there is no U and the
    stack puts out ``bypass + T`` channels (:meth:`out_chs`), which the necks wire through.

    >>> ConvStack(5, csp=True).out_chs(16), ConvStack(5, csp=True, fusion="fusion_last").out_chs(16)
    (16, 32)
    >>> ConvStack(5, csp=True, partial_ratio=0.25).plan(64, 16).bypass_chs
    8
    """

    num_convs: int = 5
    act: str = "leaky"
    csp: bool = False
    partial_ratio: float = 0.5
    fusion: str = "csp"

    def __post_init__(self) -> None:
        if self.num_convs < 1 or self.num_convs % 2 == 0:
            raise ValueError(
                f"num_convs={self.num_convs} is invalid: a stack alternates 1x1/3x3 convs and ends on a 1x1, so it is odd"
            )

    def plan(self, in_chs: int, width: int) -> StagePlan:
        """The widths of the CSP stack from ``in_chs`` to ``width`` (the stage factory's plan)."""
        return plan_stage(in_chs, self.partial_ratio, lambda chs: chs, fusion=self.fusion, out_chs=width,
                          exp_chs=2 * width, transition_b_ratio=1.0, plain_transition=False)  # fmt: skip

    def out_chs(self, width: int) -> int:
        """The width a stack made for ``width`` puts out."""
        return self.plan(width, width).out_chs if self.csp else width

    def build(self, in_chs: int, width: int, num_convs: int | None = None) -> nn.Module:
        """The stack from ``in_chs`` channels (``num_convs`` convs, default :attr:`num_convs`)."""
        if num_convs is not None and num_convs != self.num_convs:
            return replace(self, num_convs=num_convs).build(in_chs, width)
        if not self.csp:
            layers: list[nn.Module] = []
            chs = in_chs
            for i in range(self.num_convs):
                out = width if i % 2 == 0 else 2 * width
                layers.append(ConvNormAct(chs, out, 1 if i % 2 == 0 else 3, act=self.act))
                chs = out
            return nn.Sequential(*layers)
        pairs = max(1, (self.num_convs - 1) // 2)

        def make_blocks(chs: int) -> nn.Module:
            return nn.Sequential(
                *(nn.Sequential(ConvNormAct(chs, chs, 1, act=self.act), ConvNormAct(chs, chs, 3, act=self.act))
                  for _ in range(pairs))  # fmt: skip
            )

        def make_transition(chs_in: int, chs_out: int) -> nn.Module:
            return ConvNormAct(chs_in, chs_out, 1, act=self.act)

        return CrossStagePartial.build(self.plan(in_chs, width), make_blocks, make_transition)


def conv_stack(in_chs: int, width: int, num_convs: int, *, act: str = "leaky", csp: bool = False,
               partial_ratio: float = 0.5, fusion: str = "csp") -> nn.Module:  # fmt: skip
    """``ConvStack(num_convs, act, csp, partial_ratio, fusion).build(in_chs, width)`` (see :class:`ConvStack`).

    >>> conv_stack(64, 16, 5)(torch.randn(1, 64, 8, 8)).shape
    torch.Size([1, 16, 8, 8])
    >>> conv_stack(64, 16, 5, csp=True)(torch.randn(1, 64, 8, 8)).shape
    torch.Size([1, 16, 8, 8])
    >>> conv_stack(64, 16, 5, csp=True, fusion="fusion_last")(torch.randn(1, 64, 8, 8)).shape
    torch.Size([1, 32, 8, 8])
    """
    return ConvStack(num_convs, act, csp, partial_ratio, fusion).build(in_chs, width)


class SppBlock(nn.Module):
    """The cfgs' top of the pyramid: a 3-conv stack, SPP, a 3-conv stack (1x1 w, 3x3 2w, 1x1 w each).

    Without SPP it is YOLOv3's plain 5-conv stack on the coarsest level. ``out_chs`` is the width it
    puts out (``stack.out_chs(width)``).

    >>> SppBlock(64, 16)(torch.randn(1, 64, 4, 4)).shape
    torch.Size([1, 16, 4, 4])
    """

    __jit_ignored_attributes__ = ["out_chs"]

    def __init__(self, in_chs: int, width: int, *, spp: bool = True, stack: ConvStack | None = None) -> None:
        super().__init__()
        stack = stack or ConvStack()
        self.out_chs = stack.out_chs(width)
        if spp:
            self.pre = stack.build(in_chs, width, 3)
            self.spp: nn.Module = SpatialPyramidPooling()
            self.post = stack.build(4 * self.out_chs, width, 3)
        else:
            self.pre = stack.build(in_chs, width, 5)
            self.spp = nn.Identity()
            self.post = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.post(self.spp(self.pre(x)))


class Downsample(nn.Module):
    """Halve the resolution ``times`` times: 3x3/2 convs (``"conv"``) or 2x2/2 max pools (``"maxpool"``).

    A pooling downsample keeps the width and then projects with a 1x1 conv.

    >>> Downsample(8, 16, 2, "conv")(torch.randn(1, 8, 16, 16)).shape
    torch.Size([1, 16, 4, 4])
    """

    def __init__(self, in_chs: int, out_chs: int, times: int, mode: str, act: str = "leaky") -> None:
        super().__init__()
        layers: list[nn.Module] = []
        if mode == "conv":
            for i in range(times):
                layers.append(ConvNormAct(in_chs if i == 0 else out_chs, out_chs, 3, stride=2, act=act))
        elif mode == "maxpool":
            layers += [nn.MaxPool2d(2, 2, ceil_mode=True) for _ in range(times)]
            layers.append(ConvNormAct(in_chs, out_chs, 1, act=act))
        else:
            raise ValueError(f"downsample mode {mode!r} is invalid: expected 'conv' or 'maxpool'")
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


def pad_to_multiple(x: Tensor, multiple: int) -> Tensor:
    """Zero-pad the bottom and right of ``x`` so height and width are multiples of ``multiple``.

    Padding only after the image keeps pixel coordinates unchanged.

    >>> pad_to_multiple(torch.ones(1, 3, 30, 64), 32).shape
    torch.Size([1, 3, 32, 64])
    """
    h, w = x.shape[-2], x.shape[-1]
    pad_h = (multiple - h % multiple) % multiple
    pad_w = (multiple - w % multiple) % multiple
    if pad_h == 0 and pad_w == 0:
        return x
    return F.pad(x, [0, pad_w, 0, pad_h])
