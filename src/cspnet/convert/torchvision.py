"""torchvision DenseNet checkpoints -> this library's DenseNet layout.

torchvision keys (published files use the legacy ``norm.1`` / ``conv.1`` spelling of dense layers)::

    features.conv0 / features.norm0                 -> stem.conv1.conv / stem.conv1.bn
    features.denseblock{b}.denselayer{l}.norm1      -> stages.{b-1}.blocks.{l-1}.norm1   (also conv1, norm2, conv2)
    features.transition{b}.norm / .conv             -> stages.{b-1}.conv_transition.norm / .conv
    features.norm5                                  -> final_norm
    classifier                                      -> head.fc
"""

from __future__ import annotations

import re
from collections.abc import Callable

from torch import nn

from cspnet.convert.checkpoint import Converter, StateDict, register_converter

_RULES: list[tuple[re.Pattern[str], str | Callable[[re.Match[str]], str]]] = [
    (re.compile(r"^features\.conv0\."), "stem.conv1.conv."),
    (re.compile(r"^features\.norm0\."), "stem.conv1.bn."),
    (
        re.compile(r"^features\.denseblock(\d+)\.denselayer(\d+)\.(norm|conv)\.?([12])\."),
        lambda m: f"stages.{int(m[1]) - 1}.blocks.{int(m[2]) - 1}.{m[3]}{m[4]}.",
    ),
    (
        re.compile(r"^features\.transition(\d+)\.(norm|conv)\."),
        lambda m: f"stages.{int(m[1]) - 1}.conv_transition.{m[2]}.",
    ),
    (re.compile(r"^features\.norm5\."), "final_norm."),
    (re.compile(r"^classifier\."), "head.fc."),
]


def torchvision_densenet_key(key: str) -> str:
    """This library's name for a torchvision DenseNet key (either spelling).

    >>> torchvision_densenet_key("features.denseblock2.denselayer3.norm.1.weight")
    'stages.1.blocks.2.norm1.weight'
    """
    for pattern, repl in _RULES:
        new, n = pattern.subn(repl, key, count=1)
        if n:
            return new
    return key


def _detect(state: StateDict, model: nn.Module) -> bool:
    return "features.conv0.weight" in state


def _convert(state: StateDict, model: nn.Module) -> StateDict:
    return {torchvision_densenet_key(k): v for k, v in state.items()}


register_converter(Converter("torchvision DenseNet", _detect, _convert))
