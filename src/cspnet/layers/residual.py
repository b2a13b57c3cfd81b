"""Residual blocks of the ResNe(X)t- and Darknet-style families, with darknet's shortcut as an option.

Two blocks, with timm's key names (``conv1``, ``conv2``, ``conv3``):

* :class:`BottleneckBlock` (ResNe(X)t): 1x1 -> 3x3 (grouped, optionally strided) -> 1x1 *linear*,
  add the shortcut, then the activation (darknet's ``[shortcut] activation=leaky``).
* :class:`DarkBlock` (Darknet): 1x1 -> 3x3, add the shortcut, no activation after the add
  (``[shortcut] activation=linear``).

The shortcut is either ``"identity"`` (a plain add: the block must keep its shape, as in every timm
model) or ``"darknet"``: darknet's parameter-free ``[shortcut]``, which adds the first
``min(C_in, C_out)`` channels of the input, subsampled by the block's stride, to the same channels of
the output and leaves the other output channels unchanged::

    out[:, :min(C_in, C_out)] += x[:, :min(C_in, C_out), ::stride, ::stride]

That is how the darknet ResNet-50 / ResNeXt-50 baselines do without projection shortcuts, and how
block 1 of stage 1 of CSPResNe(X)t-50 adds a 64-channel input to a 128-channel output.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from cspnet.layers.act import make_act
from cspnet.layers.drop import DropPath
from cspnet.layers.norm import ConvNormAct

SHORTCUTS: tuple[str, ...] = ("identity", "darknet")


def darknet_shortcut(out: Tensor, x: Tensor, chs: int, stride: int) -> Tensor:
    """Darknet's ``[shortcut]``: add ``x[:, :chs, ::stride, ::stride]`` to ``out[:, :chs]``.

    >>> out, x = torch.zeros(1, 4, 2, 2), torch.ones(1, 2, 4, 4)
    >>> darknet_shortcut(out, x, chs=2, stride=2)[0, :, 0, 0]
    tensor([1., 1., 0., 0.])
    """
    if stride > 1:
        x = x[:, :, ::stride, ::stride]
    return torch.cat([out[:, :chs] + x[:, :chs], out[:, chs:]], dim=1)


def bottleneck_convs(
    in_chs: int, out_chs: int, mid_chs: int, stride: int = 1, groups: int = 1, act: str = "relu"
) -> tuple[ConvNormAct, ...]:
    """ResNe(X)t's residual branch: 1x1 to ``mid_chs`` -> 3x3 (groups, stride) -> 1x1 *linear* to ``out_chs``.

    >>> [c.conv.out_channels for c in bottleneck_convs(64, 128, 32)]
    [32, 32, 128]
    """
    return (
        ConvNormAct(in_chs, mid_chs, 1, act=act),
        ConvNormAct(mid_chs, mid_chs, 3, stride=stride, groups=groups, act=act),
        ConvNormAct(mid_chs, out_chs, 1, act="linear"),
    )


def dark_convs(
    in_chs: int, out_chs: int, mid_chs: int, stride: int = 1, groups: int = 1, act: str = "relu"
) -> tuple[ConvNormAct, ...]:
    """Darknet's residual branch: 1x1 to ``mid_chs`` -> 3x3 (groups, stride) to ``out_chs``.

    >>> [c.conv.out_channels for c in dark_convs(64, 64, 32)]
    [32, 64]
    """
    return (
        ConvNormAct(in_chs, mid_chs, 1, act=act),
        ConvNormAct(mid_chs, out_chs, 3, stride=stride, groups=groups, act=act),
    )


class _ResidualBlock(nn.Module):
    """What every residual block shares: the arguments, the shortcut rule and stochastic depth.

    Subclasses say what the residual branch computes (``make_convs``, given ``in_chs, out_chs,
    mid_chs, stride, groups, act``) and whether an activation follows the add (``post_add_act``).
    """

    make_convs = staticmethod(bottleneck_convs)
    post_add_act = True

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        stride: int = 1,
        shortcut: str = "identity",
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        if shortcut not in SHORTCUTS:
            raise ValueError(f"shortcut={shortcut!r} is invalid: expected one of {', '.join(SHORTCUTS)}")
        reshapes = in_chs != out_chs or stride != 1
        if reshapes and shortcut == "identity":
            raise ValueError(
                f"an identity shortcut cannot join {in_chs} input and {out_chs} output channels at stride "
                f"{stride}; use shortcut='darknet' (partial-channel, parameter-free)"
            )
        # A plain add when shapes agree (darknet's rule reduces to it); the partial add otherwise.
        self.partial_shortcut = reshapes
        self.shortcut_chs = min(in_chs, out_chs)
        self.shortcut_stride = stride
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def extra_repr(self) -> str:
        if not self.partial_shortcut:
            return ""
        return f"partial_shortcut=channels[:{self.shortcut_chs}], stride={self.shortcut_stride}"

    def _add_shortcut(self, out: Tensor, x: Tensor) -> Tensor:
        out = self.drop_path(out)
        if self.partial_shortcut:
            return darknet_shortcut(out, x, self.shortcut_chs, self.shortcut_stride)
        return out + x


class BottleneckBlock(_ResidualBlock):
    """ResNe(X)t bottleneck: 1x1 -> 3x3 (groups, stride) -> 1x1 linear, + shortcut, activation.

    The width inside is ``round(out_chs * bottle_ratio)``.

    >>> block = BottleneckBlock(64, 128, bottle_ratio=0.5, act="leaky", shortcut="darknet")
    >>> block(torch.randn(1, 64, 8, 8)).shape
    torch.Size([1, 128, 8, 8])
    """

    make_convs = staticmethod(bottleneck_convs)
    post_add_act = True

    def __init__(self, in_chs: int, out_chs: int, bottle_ratio: float = 0.25, stride: int = 1, groups: int = 1,
                 act: str = "relu", shortcut: str = "identity", drop_path: float = 0.0) -> None:  # fmt: skip
        super().__init__(in_chs, out_chs, stride, shortcut, drop_path)
        self.mid_chs = int(round(out_chs * bottle_ratio))
        self.conv1, self.conv2, self.conv3 = bottleneck_convs(in_chs, out_chs, self.mid_chs, stride, groups, act)
        self.act3 = make_act(act)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv3(self.conv2(self.conv1(x)))
        return self.act3(self._add_shortcut(out, x))


class DarkBlock(_ResidualBlock):
    """Darknet block: 1x1 -> 3x3 (groups, stride), + shortcut, no activation after the add.

    The width inside is ``round(out_chs * bottle_ratio)``.

    >>> DarkBlock(64, 64, bottle_ratio=0.5, act="leaky")(torch.randn(1, 64, 8, 8)).shape
    torch.Size([1, 64, 8, 8])
    """

    make_convs = staticmethod(dark_convs)
    post_add_act = False

    def __init__(self, in_chs: int, out_chs: int, bottle_ratio: float = 0.5, stride: int = 1, groups: int = 1,
                 act: str = "relu", shortcut: str = "identity", drop_path: float = 0.0) -> None:  # fmt: skip
        super().__init__(in_chs, out_chs, stride, shortcut, drop_path)
        self.mid_chs = int(round(out_chs * bottle_ratio))
        self.conv1, self.conv2 = dark_convs(in_chs, out_chs, self.mid_chs, stride, groups, act)

    def forward(self, x: Tensor) -> Tensor:
        return self._add_shortcut(self.conv2(self.conv1(x)), x)


BLOCKS: dict[str, type[_ResidualBlock]] = {"bottleneck": BottleneckBlock, "dark": DarkBlock}
