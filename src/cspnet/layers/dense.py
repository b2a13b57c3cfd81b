"""Dense layers and dense blocks (Huang et al., DenseNet), pre-activation as in torchvision.

:class:`DenseBlock` owns the dense connectivity (every layer reads the list of all earlier feature
maps; the block returns their concatenation); what one layer computes is pluggable through
``make_layer``, so PeleeNet's two-way dense layer (:mod:`cspnet.layers.pelee`) reuses the block.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import Tensor, nn

from cspnet.layers.checkpoint import checkpoint_once
from cspnet.layers.drop import DropPath
from cspnet.layers.norm import BatchNormAct2d


def dense_bottleneck(in_chs: int, mid_chs: int, growth_rate: int, act: str = "relu") -> OrderedDict[str, nn.Module]:
    """A dense layer after its first BN-act: conv1x1 to ``mid_chs``, BN-act, conv3x3 to ``growth_rate``
    (torchvision's ``conv1``, ``norm2``, ``conv2``).

    >>> list(dense_bottleneck(64, 128, 32))
    ['conv1', 'norm2', 'conv2']
    """
    return OrderedDict(
        conv1=nn.Conv2d(in_chs, mid_chs, 1, bias=False),
        norm2=BatchNormAct2d(mid_chs, act=act),
        conv2=nn.Conv2d(mid_chs, growth_rate, 3, padding=1, bias=False),
    )


class DenseLayer(nn.Module):
    """BN-act-conv1x1 (bottleneck to ``bn_size * growth_rate``) then BN-act-conv3x3 (``growth_rate``).

    The input is the list of all earlier feature maps of the block; concatenating them is the
    layer's first step, so ``memory_efficient=True`` can recompute the concatenation and the
    bottleneck in the backward pass instead of storing them (Pleiss et al., 2017).
    """

    def __init__(
        self,
        in_chs: int,
        growth_rate: int,
        bn_size: int = 4,
        act: str = "relu",
        drop_path_rate: float = 0.0,
        memory_efficient: bool = False,
    ) -> None:
        super().__init__()
        self.norm1 = BatchNormAct2d(in_chs, act=act)
        self.conv1, self.norm2, self.conv2 = dense_bottleneck(in_chs, bn_size * growth_rate, growth_rate, act).values()
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()
        self.memory_efficient = memory_efficient

    def bottleneck(self, features: list[Tensor]) -> Tensor:
        return self.conv1(self.norm1(torch.cat(features, 1)))

    def forward(self, features: list[Tensor]) -> Tensor:
        if self.memory_efficient and self.training and not torch.jit.is_scripting():
            x = self._bottleneck_checkpointed(features)
        else:
            x = self.bottleneck(features)
        return self.drop_path(self.conv2(self.norm2(x)))

    @torch.jit.unused
    def _bottleneck_checkpointed(self, features: list[Tensor]) -> Tensor:
        return checkpoint_once(lambda *f: self.bottleneck(list(f)), self.norm1, *features)


DenseLayerFactory = Callable[[int, float], nn.Module]
"""``make_layer(in_chs, drop_path_rate) -> layer``: a module mapping the list of the block's feature
maps so far (``in_chs`` channels in all) to ``growth_rate`` new channels."""


class DenseBlock(nn.ModuleList):
    """``num_layers`` dense layers; the output concatenates the input and every layer's features.

    Layer ``i`` is ``make_layer(in_chs + i * growth_rate, drop_path_rates[i])``; without
    ``make_layer`` it is torchvision's :class:`DenseLayer` (``bn_size``, ``act`` and
    ``memory_efficient`` only configure that default layer).

    >>> import torch
    >>> block = DenseBlock(16, num_layers=3, growth_rate=12)
    >>> block.out_chs, block(torch.randn(2, 16, 8, 8)).shape
    (52, torch.Size([2, 52, 8, 8]))
    """

    def __init__(
        self,
        in_chs: int,
        num_layers: int,
        growth_rate: int,
        bn_size: int = 4,
        act: str = "relu",
        drop_path_rates: list[float] | None = None,
        memory_efficient: bool = False,
        make_layer: DenseLayerFactory | None = None,
    ) -> None:
        rates = drop_path_rates or [0.0] * num_layers
        if make_layer is None:

            def make_layer(chs: int, rate: float) -> nn.Module:
                return DenseLayer(chs, growth_rate, bn_size, act, rate, memory_efficient)

        super().__init__(make_layer(in_chs + i * growth_rate, rates[i]) for i in range(num_layers))
        self.out_chs = in_chs + num_layers * growth_rate
        self.grad_checkpointing = False

    def forward(self, x: Tensor) -> Tensor:
        features = [x]
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return self._forward_checkpointed(features)
        for layer in self:
            features.append(layer(features))
        return torch.cat(features, 1)

    @torch.jit.unused
    def _forward_checkpointed(self, features: list[Tensor]) -> Tensor:
        for layer in self:
            features.append(checkpoint_once(lambda *f, lyr=layer: lyr(list(f)), layer, *features))
        return torch.cat(features, 1)
