"""ELASTIC blocks (Wang et al., "ELASTIC: Improving CNNs with Dynamic Scaling Policies", CVPR 2019).

A block runs part of its work at half resolution: a 2x2 pool, the branch, then a 2x upsample back to
the input's size (:class:`HalfResolution`, the one place that rule lives). Two published layouts use it:

* :class:`ElasticBlock`, the CSPNet repository's ``*-elastic.cfg`` (spec 2.6): a residual block whose
  input channel halves take two copies of the block's convs, the first half at full resolution, the
  second after a 2x2 max pool and upsampled back (darknet's nearest ``[upsample]``); the two are
  concatenated, the shortcut is added and the block's post-add activation applied. It takes the
  arguments of :class:`~cspnet.layers.BottleneckBlock` / :class:`~cspnet.layers.DarkBlock`, so a
  stage builds it wherever it builds those.
* :class:`ElasticDenseLayer`, allenai/elastic's DenseNet-201-Elastic: after the dense layer's
  BN-ReLU, its bottleneck is split in two halves that both read the whole input, one at full
  resolution and one after a 2x2 average pool (upsampled bilinearly); their outputs are summed.

Sizes need not be even: the pool rounds up (``ceil_mode``) and the upsampled map is cropped to the
input's size, which on even sizes is exactly darknet's and allenai's arithmetic.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from cspnet.layers.act import make_act
from cspnet.layers.checkpoint import checkpoint_once
from cspnet.layers.dense import dense_bottleneck
from cspnet.layers.drop import DropPath
from cspnet.layers.norm import BatchNormAct2d
from cspnet.layers.residual import BLOCKS, _ResidualBlock

ELASTIC_POOLS: tuple[str, ...] = ("max", "avg")
"""The 2x2/2 pool that opens the half-resolution branch: darknet's ``[maxpool]`` or allenai's average pool."""
ELASTIC_UPSAMPLES: tuple[str, ...] = ("nearest", "bilinear")
"""How the half-resolution branch comes back: darknet's ``[upsample]`` or allenai's bilinear interpolation."""


class HalfResolution(nn.Module):
    """``branch`` run on the input pooled 2x2/2, its output upsampled 2x and cropped to the input's size.

    >>> up = HalfResolution(nn.Conv2d(4, 6, 3, padding=1), pool="max", upsample="nearest")
    >>> up(torch.randn(1, 4, 7, 9)).shape
    torch.Size([1, 6, 7, 9])
    """

    def __init__(self, branch: nn.Module, pool: str = "max", upsample: str = "nearest") -> None:
        super().__init__()
        if pool not in ELASTIC_POOLS:
            raise ValueError(f"elastic_pool={pool!r} is invalid: expected one of {', '.join(map(repr, ELASTIC_POOLS))}")
        if upsample not in ELASTIC_UPSAMPLES:
            raise ValueError(
                f"elastic_upsample={upsample!r} is invalid: expected one of {', '.join(map(repr, ELASTIC_UPSAMPLES))}"
            )
        pool_cls = nn.MaxPool2d if pool == "max" else nn.AvgPool2d
        self.pool = pool_cls(2, stride=2, ceil_mode=True)
        self.branch = branch
        self.bilinear = upsample == "bilinear"

    def extra_repr(self) -> str:
        return f"upsample={'bilinear' if self.bilinear else 'nearest'}"

    def forward(self, x: Tensor) -> Tensor:
        y = self.branch(self.pool(x))
        if self.bilinear:
            y = F.interpolate(y, scale_factor=2.0, mode="bilinear", align_corners=False)
        else:
            y = F.interpolate(y, scale_factor=2.0, mode="nearest")
        # An odd size was pooled up (ceil_mode): the last upsampled row / column lies outside the input.
        return y[:, :, : x.shape[2], : x.shape[3]]


def _sequential(convs: tuple[nn.Module, ...]) -> nn.Sequential:
    """Convs keyed ``conv1``, ``conv2`` ... as in the residual blocks."""
    return nn.Sequential(OrderedDict((f"conv{i + 1}", conv) for i, conv in enumerate(convs)))


class ElasticBlock(_ResidualBlock):
    """A residual block (``kind``: ``"bottleneck"`` or ``"dark"``) split over two resolutions.

    Input channels ``[:in_chs // 2]`` run the block's convs at full resolution (``high``), the rest
    run them at half resolution (``low``); each half is ``out_chs // 2`` (the rest) wide inside, with
    ``round(half * bottle_ratio)`` mid channels and ``groups // 2`` groups (each half keeps the
    block's channels per group: the ResNeXt cfg's g16 halves of a g32 block). The halves are
    concatenated, the shortcut added (``shortcut`` as in the other blocks) and, for a bottleneck,
    the activation applied.

    >>> block = ElasticBlock(64, 64, bottle_ratio=1.0, groups=32, act="leaky", kind="bottleneck")
    >>> block(torch.randn(1, 64, 8, 8)).shape, block.high.conv2.conv.groups
    (torch.Size([1, 64, 8, 8]), 16)
    """

    def __init__(self, in_chs: int, out_chs: int, bottle_ratio: float = 1.0, stride: int = 1, groups: int = 1,
                 act: str = "relu", shortcut: str = "identity", drop_path: float = 0.0, *, kind: str = "bottleneck",
                 pool: str = "max", upsample: str = "nearest") -> None:  # fmt: skip
        if stride != 1:
            raise ValueError(
                f"an ELASTIC block keeps its input's resolution (stride 1, not {stride}): open the stage with a "
                "strided conv (down='conv')"
            )
        if kind not in BLOCKS:
            raise ValueError(f"block={kind!r} is invalid: expected one of {', '.join(map(repr, BLOCKS))}")
        if groups > 1 and groups % 2:
            raise ValueError(f"groups={groups} is invalid for ELASTIC blocks: each half takes groups / 2, so 1 or even")
        super().__init__(in_chs, out_chs, stride, shortcut, drop_path)
        block = BLOCKS[kind]
        half_groups = max(1, groups // 2)
        self.split = in_chs // 2
        halves = ((self.split, out_chs // 2), (in_chs - self.split, out_chs - out_chs // 2))
        (in_hi, out_hi), (in_lo, out_lo) = halves
        self.high = _sequential(block.make_convs(in_hi, out_hi, int(round(out_hi * bottle_ratio)), 1, half_groups, act))
        low = _sequential(block.make_convs(in_lo, out_lo, int(round(out_lo * bottle_ratio)), 1, half_groups, act))
        self.low = HalfResolution(low, pool, upsample)
        self.act = make_act(act) if block.post_add_act else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = torch.cat([self.high(x[:, : self.split]), self.low(x[:, self.split :])], 1)
        return self.act(self._add_shortcut(out, x))


class ElasticDenseLayer(nn.Module):
    """allenai's elastic dense layer: BN-act of the concatenated features, then two halves of the
    bottleneck (``bn_size * growth_rate / 2`` channels each, 1x1 -> BN-act -> 3x3 to ``growth_rate``),
    one at full resolution (``high``) and one at half resolution (``low``), summed.

    Takes the list of the block's feature maps so far, like :class:`~cspnet.layers.DenseLayer`
    (:class:`~cspnet.layers.DenseBlock`'s ``make_layer``); ``memory_efficient=True`` recomputes the
    concatenation and its norm in the backward pass.

    >>> layer = ElasticDenseLayer(48, growth_rate=32)
    >>> layer([torch.randn(1, 16, 8, 8), torch.randn(1, 32, 8, 8)]).shape
    torch.Size([1, 32, 8, 8])
    """

    def __init__(self, in_chs: int, growth_rate: int, bn_size: int = 4, act: str = "relu",
                 drop_path_rate: float = 0.0, memory_efficient: bool = False, *, pool: str = "avg",
                 upsample: str = "bilinear") -> None:  # fmt: skip
        super().__init__()
        mid_chs = bn_size * growth_rate // 2
        if mid_chs < 1:
            raise ValueError(f"bn_size={bn_size} x growth_rate={growth_rate} is too small to halve for an ELASTIC layer")
        self.norm1 = BatchNormAct2d(in_chs, act=act)
        self.high = nn.Sequential(dense_bottleneck(in_chs, mid_chs, growth_rate, act))
        self.low = HalfResolution(nn.Sequential(dense_bottleneck(in_chs, mid_chs, growth_rate, act)), pool, upsample)
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()
        self.memory_efficient = memory_efficient

    def normed(self, features: list[Tensor]) -> Tensor:
        return self.norm1(torch.cat(features, 1))

    def forward(self, features: list[Tensor]) -> Tensor:
        if self.memory_efficient and self.training and not torch.jit.is_scripting():
            x = self._normed_checkpointed(features)
        else:
            x = self.normed(features)
        return self.drop_path(self.high(x) + self.low(x))

    @torch.jit.unused
    def _normed_checkpointed(self, features: list[Tensor]) -> Tensor:
        return checkpoint_once(lambda *f: self.normed(list(f)), self.norm1, *features)
