"""The uniform model every family builds: stem -> stages -> final norm -> classifier head."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from cspnet.layers.norm import ConvNormAct


class FeatureInfo(list):
    """Per-level metadata of the feature maps, recorded while a model is built.

    Level 0 is the stem output; level ``i`` is the output of ``stages[i - 1]``. Each entry is a dict
    with ``num_chs``, ``reduction`` (stride relative to the input) and ``module``.
    """

    def channels(self) -> list[int]:
        return [f["num_chs"] for f in self]

    def reduction(self) -> list[int]:
        return [f["reduction"] for f in self]

    def module_name(self) -> list[str]:
        return [f["module"] for f in self]


class ClassifierHead(nn.Module):
    """Global average pool -> dropout -> linear (darknet's 1x1 classifier after the pool is the same map)."""

    def __init__(self, in_chs: int, num_classes: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.drop = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        self.fc = nn.Linear(in_chs, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.drop(self.flatten(self.global_pool(x)))
        if pre_logits:
            return x
        return self.fc(x)


def conv_stem(in_chans: int, chs: int, kernel_size: int, stride: int, act: str) -> nn.Sequential:
    """A stem of one conv-BN-act, keyed ``stem.conv1`` in every family (the converters' layout)."""
    return nn.Sequential(OrderedDict(conv1=ConvNormAct(in_chans, chs, kernel_size, stride=stride, act=act)))


def resnet_stem(in_chans: int, chs: int, act: str, pool: str = "3x3") -> tuple[nn.Sequential, nn.Module]:
    """ResNet's stem, a 7x7/2 conv, and the max pool that opens stage 0 (stride 4 in all).

    ``pool``: ``"3x3"``, 3x3/2 with padding 1 (torchvision, timm), or ``"2x2"``, darknet's
    ``[maxpool] size=2 stride=2``, which rounds odd sizes up (a plain 2x2/2 window on even sizes).
    """
    stem = conv_stem(in_chans, chs, 7, 2, act)
    if pool == "3x3":
        return stem, nn.MaxPool2d(3, stride=2, padding=1)
    return stem, nn.MaxPool2d(2, 2, ceil_mode=True)


class GradCheckpointing(nn.Module):
    """What :class:`Backbone` and :class:`FeatureExtractor` share: ``set_grad_checkpointing``, which
    every module with a ``grad_checkpointing`` flag (stages, dense blocks) honours."""

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute block activations in the backward pass: same outputs and gradients, less memory."""
        for module in self.modules():
            if hasattr(module, "grad_checkpointing"):
                setattr(module, "grad_checkpointing", enable)  # noqa: B010 (typed nn.Module attribute)


class Backbone(GradCheckpointing):
    """A classification network in the uniform layout of this library.

    ``stem`` (stride 1 or 2) is followed by ``stages``, each of which opens with its own
    downsampling; ``final_norm`` is the closing BN-act of pre-activation families (DenseNet's
    ``norm5``) and an identity elsewhere. ``feature_info`` records every level's width and stride.

    Built through :func:`cspnet.create_model`, not directly.
    """

    def __init__(
        self,
        stem: nn.Module,
        stages: Sequence[nn.Module],
        feature_info: FeatureInfo,
        num_classes: int = 1000,
        drop_rate: float = 0.0,
        final_norm: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.stem = stem
        self.stages = nn.Sequential(*stages)
        self.final_norm = final_norm if final_norm is not None else nn.Identity()
        self.feature_info = feature_info
        self.num_features = feature_info[-1]["num_chs"]
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.head = ClassifierHead(self.num_features, num_classes, drop_rate)
        self.name: str = ""
        self.config: Any = None

    def forward_features(self, x: Tensor) -> Tensor:
        """The last feature map, before pooling: ``(N, num_features, H / stride, W / stride)``."""
        return self.final_norm(self.stages(self.stem(x)))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Pool and classify a ``forward_features`` map; ``pre_logits=True`` stops after pooling."""
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier with a fresh one for ``num_classes`` (0 removes it)."""
        self.num_classes = num_classes
        self.head.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()


class FeatureExtractor(GradCheckpointing):
    """A backbone cut after its deepest requested level, returning the maps of ``out_indices``.

    >>> import cspnet, torch
    >>> m = cspnet.create_model("cspdensenet121", features_only=True, out_indices=(2, 3, 4))
    >>> [tuple(f.shape) for f in m(torch.randn(1, 3, 224, 224))]
    [(1, 256, 28, 28), (1, 512, 14, 14), (1, 1024, 7, 7)]
    >>> m.feature_info.channels(), m.feature_info.reduction()
    ([256, 512, 1024], [8, 16, 32])
    """

    def __init__(self, model: Backbone, out_indices: Sequence[int] | None = None) -> None:
        super().__init__()
        levels = len(model.feature_info)
        if out_indices is None:
            out_indices = tuple(range(levels))
        out_indices = tuple(int(i) for i in out_indices)
        bad = [i for i in out_indices if not -levels <= i < levels]
        if not out_indices or bad:
            raise ValueError(f"out_indices={tuple(out_indices)} is invalid: this model has levels 0..{levels - 1}")
        resolved = sorted({i % levels for i in out_indices})
        last = resolved[-1]
        self.out_indices = resolved
        self.stem = model.stem
        self.stages = nn.Sequential(*list(model.stages)[:last])
        # The closing norm belongs to the deepest level only.
        self.final_norm = model.final_norm if last == levels - 1 else nn.Identity()
        self.feature_info = FeatureInfo(model.feature_info[i] for i in resolved)
        self.name = model.name
        self.config = model.config

    def forward(self, x: Tensor) -> list[Tensor]:
        features: list[Tensor] = []
        x = self.stem(x)
        num_stages = len(self.stages)
        if 0 in self.out_indices:
            features.append(self.final_norm(x) if num_stages == 0 else x)
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i + 1 in self.out_indices:
                features.append(self.final_norm(x) if i + 1 == num_stages else x)
        return features


@torch.no_grad()
def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def init_weights(model: nn.Module) -> None:
    """He-normal convs, unit/zero norms, zero linear biases (torchvision's DenseNet / ResNet init)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)
