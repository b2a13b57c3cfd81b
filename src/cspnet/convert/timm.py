"""timm CSP-family checkpoints (cspresnet50, cspresnext50, cspdarknet53, darknet53) -> this layout.

timm's keys are this library's keys except the stage's opening conv: timm's ``CrossStage`` /
``DarkStage`` call it ``conv_down``, :class:`~cspnet.layers.CrossStagePartial` calls it ``down``::

    stages.{i}.conv_down.conv.weight  ->  stages.{i}.down.conv.weight

(The ResNet-style stem pool, timm's ``stem.pool``, is ``stages.0.down`` here but has no weights.)
A timm file with no ``conv_down`` key at all already is in this layout and loads unconverted.
"""

from __future__ import annotations

import re

from torch import nn

from cspnet.convert.checkpoint import Converter, StateDict, register_converter

_CONV_DOWN = re.compile(r"^(stages\.\d+)\.conv_down\.")


def timm_csp_key(key: str) -> str:
    """This library's name for a timm CSP-family key.

    >>> timm_csp_key("stages.1.conv_down.bn.running_var")
    'stages.1.down.bn.running_var'
    >>> timm_csp_key("stages.1.conv_exp.conv.weight")
    'stages.1.conv_exp.conv.weight'
    """
    return _CONV_DOWN.sub(r"\1.down.", key, count=1)


def _detect(state: StateDict, model: nn.Module) -> bool:
    # Only rename where the model really has the renamed module, so another family's own
    # ``conv_down`` keys are never touched.
    own = model.state_dict()
    return any(_CONV_DOWN.match(k) and timm_csp_key(k) in own for k in state)


def _convert(state: StateDict, model: nn.Module) -> StateDict:
    return {timm_csp_key(k): v for k, v in state.items()}


register_converter(Converter("timm CSP", _detect, _convert))
