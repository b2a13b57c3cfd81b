"""The detectors' darknet ``.weights`` layer order (cfg order: backbone, neck, heads), for the one reader.

:func:`cspnet.convert.darknet.read_darknet_weights` reads every ``.weights`` file; a detector tells
it its layer order through :meth:`Detector.darknet_layout <cspnet.models.detectors.Detector.darknet_layout>`,
which is :func:`detector_darknet_layout`. The backbone's layers come from
:func:`cspnet.convert.darknet.darknet_layers` (the CSP split and U permutations included). The neck
and the heads follow in ``neck.cfg_order``: each named neck part's conv-BN layers in module order,
CSP neck stacks (``neck_csp=True``) permuted exactly as the backbone's CSP stages are
(:func:`~cspnet.convert.darknet.csp_conv_layers`), and at each head index that head's 3x3 conv-BN
and then its prediction conv (no BN: ``biases`` then the kernel, as darknet writes a conv before
``[yolo]``; ``A * (5 + classes)`` rows). A ``[sam]``'s conv (``sam=True``) comes right before its head.

The reader then also loads a backbone-only file (darknet's ``partial`` output, e.g.
``csdarknet53.conv.105``) and a file for another number of classes (every layer but the prediction
convs), the rest keeping its initialisation.
"""

from __future__ import annotations

from torch import nn

from cspnet.convert.darknet import DarknetConv, DarknetLayout, DarknetOutput, csp_conv_layers, darknet_layers
from cspnet.models.detectors.head import YoloHead
from cspnet.models.detectors.necks import Neck


def _prefixed(prefix: str, layers: list[DarknetConv]) -> list[DarknetConv]:
    return [DarknetConv(f"{prefix}.{c.name}", c.module, c.row_splits, c.rotate_in) for c in layers]


def detector_darknet_layout(backbone: nn.Module, neck: Neck, head: YoloHead) -> DarknetLayout:
    """The darknet layout of the detector made of ``backbone`` (its feature extractor), ``neck`` and ``head``."""
    layers: list[DarknetConv | DarknetOutput] = [*_prefixed("backbone", darknet_layers(backbone))]
    backbone_layers = len(layers)
    anchors = head.anchors_per_scale
    for part in neck.cfg_order:
        if isinstance(part, str):
            layers += csp_conv_layers(getattr(neck, part), f"neck.{part}")
            continue
        layers += csp_conv_layers(neck.attention[part], f"neck.attention.{part}")
        level = head.levels[part]
        children = list(level.named_children())
        layers += csp_conv_layers(children[0][1], f"head.levels.{part}.{children[0][0]}")
        child, prediction = children[-1]
        assert isinstance(prediction, nn.Conv2d)
        row_shape = tuple(prediction.weight.shape[1:])
        layers.append(DarknetOutput(f"head.levels.{part}.{child}", row_shape, 5 * anchors, anchors, prediction.out_channels))
    return DarknetLayout(tuple(layers), backbone=backbone_layers, outputs="prediction convs")
