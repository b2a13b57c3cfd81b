"""Convolution, batch-norm and activation building blocks.

Two orderings exist in the CSP families:

* post-activation ``ConvNormAct`` (conv -> BN -> act): ResNe(X)t, Darknet, PeleeNet and the stems;
* pre-activation ``NormActConv`` (BN -> act -> conv): DenseNet's dense layers and transitions.

``BatchNormAct2d`` keeps the activation inside the norm module so that state-dict keys stay
``<name>.bn.weight`` (timm's layout) and conv/BN folding can replace the pair in one place.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from cspnet.layers.act import make_act


class BatchNormAct2d(nn.BatchNorm2d):
    """BatchNorm2d followed by an activation; state-dict keys are those of ``nn.BatchNorm2d``.

    >>> import torch
    >>> BatchNormAct2d(8, act="relu")(torch.randn(2, 8, 4, 4)).shape
    torch.Size([2, 8, 4, 4])
    """

    def __init__(self, num_features: int, act: str = "relu", eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__(num_features, eps=eps, momentum=momentum)
        self.act = make_act(act)

    def forward(self, x: Tensor) -> Tensor:
        # nn.BatchNorm2d.forward, inlined because TorchScript cannot call super().
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average
                factor = 1.0 / float(self.num_batches_tracked)
        use_batch_stats = self.training or self.running_mean is None
        x = F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, use_batch_stats, factor, self.eps
        )
        return self.act(x)


class ConvNormAct(nn.Module):
    """Post-activation conv (no bias) -> BN -> activation, darknet's ``[convolutional] batch_normalize=1``.

    >>> import torch
    >>> ConvNormAct(3, 16, kernel_size=3, stride=2)(torch.randn(1, 3, 32, 32)).shape
    torch.Size([1, 16, 16, 16])
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int = 1,
        stride: int = 1,
        groups: int = 1,
        act: str = "relu",
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_chs, out_chs, kernel_size, stride=stride, padding=kernel_size // 2, groups=groups, bias=False
        )
        self.bn = BatchNormAct2d(out_chs, act=act)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.conv(x))


class NormActConv(nn.Module):
    """Pre-activation BN -> activation -> conv (no bias), DenseNet's layer order.

    >>> import torch
    >>> NormActConv(16, 8)(torch.randn(1, 16, 8, 8)).shape
    torch.Size([1, 8, 8, 8])
    """

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int = 1, stride: int = 1, act: str = "relu") -> None:
        super().__init__()
        self.norm = BatchNormAct2d(in_chs, act=act)
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride=stride, padding=kernel_size // 2, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(self.norm(x))
