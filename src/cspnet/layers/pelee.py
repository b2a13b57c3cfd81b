"""PeleeNet's layers (Wang, Li & Ling, "Pelee", NeurIPS 2018): the stem's two-way downsampling and
the two-way dense layer. Post-activation conv-BN-ReLU (:class:`ConvNormAct`) throughout.

Attribute names follow the Pelee reference implementation (``stem2a``, ``branch1a`` ...), so a
converter for its checkpoints maps names one to one (``norm`` -> ``bn``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from cspnet.layers.drop import DropPath
from cspnet.layers.norm import ConvNormAct


class PeleeStemDown(nn.Module):
    """The second half of Pelee's stem block: two ways down by 2, concatenated, fused by a 1x1.

    ``stem2a`` (1x1 to ``chs / 2``) -> ``stem2b`` (3x3/2 to ``chs``) and a 2x2/2 max-pool of the
    input, concatenated to ``2 * chs`` and fused by ``stem3`` (1x1 to ``chs``). Pelee's whole stem
    block is ``3x3/2 conv -> PeleeStemDown``; the library's models put the 3x3/2 conv in the stem
    (feature level 0 at stride 2, as in every family) and this module at the opening of stage 0.

    The max-pool rounds up (``ceil_mode``) so that both ways agree on odd sizes.

    >>> import torch
    >>> PeleeStemDown(32)(torch.randn(1, 32, 112, 112)).shape
    torch.Size([1, 32, 56, 56])
    """

    def __init__(self, chs: int, act: str = "relu") -> None:
        super().__init__()
        self.stem2a = ConvNormAct(chs, chs // 2, 1, act=act)
        self.stem2b = ConvNormAct(chs // 2, chs, 3, stride=2, act=act)
        self.pool = nn.MaxPool2d(2, stride=2, ceil_mode=True)
        self.stem3 = ConvNormAct(2 * chs, chs, 1, act=act)

    def forward(self, x: Tensor) -> Tensor:
        return self.stem3(torch.cat([self.stem2b(self.stem2a(x)), self.pool(x)], 1))


class TwoWayDenseLayer(nn.Module):
    """Pelee's dense layer: two branches of ``growth_rate / 2`` channels each, two receptive fields.

    Branch 1: 1x1 to ``bottleneck_chs`` -> 3x3 to ``k/2``; branch 2: 1x1 to ``bottleneck_chs`` ->
    3x3 to ``k/2`` -> 3x3 to ``k/2``. Like :class:`~cspnet.layers.DenseLayer` it takes the list of
    the block's feature maps so far and returns only its ``growth_rate`` new channels
    (``[branch 1, branch 2]``); :class:`~cspnet.layers.DenseBlock` (``make_layer``) concatenates,
    which gives Pelee's ``[input, branch 1, branch 2]`` channel order.

    >>> import torch
    >>> layer = TwoWayDenseLayer(32, growth_rate=32, bottleneck_chs=16)
    >>> layer([torch.randn(1, 16, 8, 8), torch.randn(1, 16, 8, 8)]).shape
    torch.Size([1, 32, 8, 8])
    """

    def __init__(
        self, in_chs: int, growth_rate: int, bottleneck_chs: int, act: str = "relu", drop_path_rate: float = 0.0
    ) -> None:
        super().__init__()
        if growth_rate % 2:
            raise ValueError(f"growth_rate={growth_rate} is invalid: a two-way dense layer needs an even growth rate")
        half = growth_rate // 2
        self.branch1a = ConvNormAct(in_chs, bottleneck_chs, 1, act=act)
        self.branch1b = ConvNormAct(bottleneck_chs, half, 3, act=act)
        self.branch2a = ConvNormAct(in_chs, bottleneck_chs, 1, act=act)
        self.branch2b = ConvNormAct(bottleneck_chs, half, 3, act=act)
        self.branch2c = ConvNormAct(half, half, 3, act=act)
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()

    def forward(self, features: list[Tensor]) -> Tensor:
        x = torch.cat(features, 1)
        branch1 = self.branch1b(self.branch1a(x))
        branch2 = self.branch2c(self.branch2b(self.branch2a(x)))
        return self.drop_path(torch.cat([branch1, branch2], 1))
