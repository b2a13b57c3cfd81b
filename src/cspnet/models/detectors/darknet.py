"""Darknet ``.weights`` for the detectors, in the cfg's layer order (backbone, neck, heads).

The backbone's layers come from :func:`cspnet.convert.darknet.darknet_layers` (the CSP split and U
permutations included). The neck and the heads follow in ``neck.cfg_order``: each named neck part's
conv-BN layers in module order, and at each head index that head's 3x3 conv-BN and then its
prediction conv (no BN: ``biases`` then the kernel, as darknet writes a conv before ``[yolo]``). A
``[sam]``'s conv (``sam=True``) comes right before its head.

Two kinds of file load besides a complete one, the heads or the neck keeping their initialisation:

* a file for another number of classes (prediction convs of another size): every layer but the
  three prediction convs;
* a backbone-only file (darknet's ``partial`` output, e.g. ``csdarknet53.conv.105``): the backbone.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from cspnet.convert.checkpoint import CheckpointError, StateDict, register_file_reader
from cspnet.convert.darknet import (
    DarknetConv,
    _layer_floats,
    _read_layer,
    darknet_layers,
    read_darknet_weights,
    read_floats,
)
from cspnet.layers import ConvNormAct
from cspnet.models.detectors.model import Detector


def _prefixed(prefix: str, layers: list[DarknetConv]) -> list[DarknetConv]:
    return [DarknetConv(f"{prefix}.{c.name}", c.module, c.row_splits, c.rotate_in) for c in layers]


def _bn_convs(prefix: str, module: nn.Module) -> list[DarknetConv]:
    return [
        DarknetConv(f"{prefix}.{name}" if name else prefix, m, (m.conv.weight.shape[0],))
        for name, m in module.named_modules()
        if isinstance(m, ConvNormAct)
    ]


def detector_darknet_layers(
    model: Detector,
) -> tuple[list[DarknetConv], list[list[DarknetConv]], list[tuple[str, nn.Conv2d]]]:
    """``(backbone layers, neck + head layers between prediction convs, (name, prediction conv))`` in cfg order.

    ``neck_layers[i]`` are the BN convs read before prediction conv ``i`` of the cfg (the last entry:
    those after the last prediction, empty for every layout here).
    """
    backbone = _prefixed("backbone", darknet_layers(model.backbone))
    segments: list[list[DarknetConv]] = [[]]
    predictions: list[tuple[str, nn.Conv2d]] = []
    neck = model.neck
    for part in neck.cfg_order:
        if isinstance(part, str):
            segments[-1] += _bn_convs(f"neck.{part}", getattr(neck, part))
            continue
        segments[-1] += _bn_convs(f"neck.attention.{part}", neck.attention[part])
        level = model.head.levels[part]
        segments[-1] += _bn_convs(f"head.levels.{part}", level)
        child, prediction = list(level.named_children())[-1]
        assert isinstance(prediction, nn.Conv2d)
        predictions.append((f"head.levels.{part}.{child}", prediction))
        segments.append([])
    return backbone, segments, predictions


def read_detector_weights(path: Path, model: Detector) -> StateDict:
    """Read darknet ``.weights`` at ``path`` into a state dict for the detector ``model``."""
    backbone, segments, predictions = detector_darknet_layers(model)
    floats = read_floats(path)
    backbone_floats = sum(_layer_floats(layer) for layer in backbone)
    neck_floats = sum(_layer_floats(layer) for segment in segments for layer in segment)
    # Each prediction conv holds A * (5 + C) rows of (in + 1) floats.
    anchors = model.head.anchors_per_scale
    per_class_row = sum(anchors * (p.in_channels + 1) for _, p in predictions)
    head_floats = floats.left - backbone_floats - neck_floats
    own = model.state_dict()
    state: StateDict = {}
    name = model.name or type(model).__name__
    if floats.left == backbone_floats:
        for layer in backbone:
            state.update(_read_layer(layer, floats))
        state.update({k: v for k, v in own.items() if not k.startswith("backbone.")})
        return {k: v.clone() for k, v in state.items()}
    if head_floats <= 0 or head_floats % per_class_row or head_floats // per_class_row < 6:
        raise CheckpointError(
            f"{path} does not fit {name}: its backbone needs {backbone_floats:,} floats, neck and heads "
            f"{neck_floats:,} plus prediction convs of (classes + 5) x {per_class_row:,} floats, but the file "
            f"holds {floats.left:,} floats after its header (a file for another network or a truncated download?)"
        )
    file_classes = head_floats // per_class_row - 5
    for layer in backbone:
        state.update(_read_layer(layer, floats))
    for i, segment in enumerate(segments):
        for layer in segment:
            state.update(_read_layer(layer, floats))
        if i == len(predictions):
            break
        key, prediction = predictions[i]
        rows = anchors * (5 + file_classes)
        bias = floats.take(rows)
        weight = floats.take(rows * prediction.in_channels).reshape(rows, prediction.in_channels, 1, 1)
        if file_classes == model.num_classes:
            state[f"{key}.bias"], state[f"{key}.weight"] = bias, weight
        else:  # another class count: the prediction convs keep their initialisation
            state[f"{key}.bias"], state[f"{key}.weight"] = own[f"{key}.bias"], own[f"{key}.weight"]
    return {k: v.clone() for k, v in state.items()}


def read_weights(path: Path, model: nn.Module) -> StateDict:
    """The ``.weights`` reader: detectors here, classification models in :mod:`cspnet.convert.darknet`."""
    if isinstance(model, Detector):
        return read_detector_weights(path, model)
    return read_darknet_weights(path, model)


register_file_reader(".weights", read_weights, replaces=read_darknet_weights)  # one reader: see the boxes branch
