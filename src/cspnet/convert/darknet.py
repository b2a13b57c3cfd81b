"""Darknet ``.weights`` files -> this library's layout, for the ``_paper`` ResNe(X)t / Darknet models.

The format (darknet's ``save_weights``): a header of int32 ``major, minor, revision`` and ``seen``
(int64 when ``major * 10 + minor >= 2``, else int32), then, for every ``[convolutional]`` layer in cfg
order, float32 arrays: with ``batch_normalize=1`` ``biases`` (BN beta), ``scales`` (gamma),
``rolling_mean``, ``rolling_var``, then the kernel; without BN (the classifier) ``biases`` then the
kernel. Nothing else carries weights (``[shortcut]``, ``[route]``, pools).

The cfg order of a model here is its module order, with two differences a CSP stage needs:

* the two parallel split convs of the cfg (bypass, then block path) are the two row blocks of one
  ``conv_exp`` (bypass rows first), so they are read one after the other and stacked;
* the cfg concatenates ``[T output, bypass]`` before U, this library ``[bypass, T output]``, so U's
  input channels are rotated on reading.

The classifier (a 1x1 conv after the global pool) is ``head.fc``; its class count is inferred from the
floats left after the backbone, so a file for 1000 classes loads into a model with another
``num_classes`` with everything but the classifier (see :func:`~cspnet.convert.load_weights`).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from cspnet.convert.checkpoint import CheckpointError, StateDict, register_file_reader
from cspnet.layers.cross_stage import CrossStagePartial
from cspnet.layers.norm import ConvNormAct


@dataclass(frozen=True)
class DarknetConv:
    """One module of the model and how the cfg's conv layer(s) map onto it.

    ``row_splits``: output rows of each cfg conv stacked into this module (one entry but for
    ``conv_exp``). ``rotate_in``: rotate the input channels left by this many (U of a CSP stage).
    """

    name: str
    module: ConvNormAct
    row_splits: tuple[int, ...]
    rotate_in: int = 0


def darknet_layers(model: nn.Module) -> list[DarknetConv]:
    """The model's BN convs in darknet cfg order (the classifier excluded).

    Raises :class:`CheckpointError` for a model whose layers darknet's format cannot describe.
    """
    stages = getattr(model, "stages", None)
    if stages is None or not all(isinstance(s, CrossStagePartial) for s in stages):
        raise CheckpointError(
            f"darknet .weights need a ResNe(X)t / Darknet-style model (CSP or plain stages), not {_model_name(model)}"
        )
    csp_parts: dict[str, tuple[int, int]] = {}  # module name -> (bypass channels, role: 0 exp, 1 U)
    for i, stage in enumerate(stages):
        if stage.bypass_chs > 0:
            csp_parts[f"stages.{i}.conv_exp"] = (stage.bypass_chs, 0)
            csp_parts[f"stages.{i}.conv_transition"] = (stage.bypass_chs, 1)
    layers: list[DarknetConv] = []
    convs_with_bn = {id(m.conv) for m in model.modules() if isinstance(m, ConvNormAct)}
    for name, module in model.named_modules():
        if isinstance(module, ConvNormAct):
            out_chs, in_chs = module.conv.weight.shape[:2]
            bypass, role = csp_parts.get(name, (0, -1))
            if role == 0:
                layers.append(DarknetConv(name, module, (bypass, out_chs - bypass)))
            elif role == 1:
                # darknet's input is [T (in - bypass channels), bypass]; ours is [bypass, T].
                layers.append(DarknetConv(name, module, (out_chs,), rotate_in=in_chs - bypass))
            else:
                layers.append(DarknetConv(name, module, (out_chs,)))
        elif isinstance(module, nn.Conv2d) and id(module) not in convs_with_bn:
            raise CheckpointError(
                f"darknet .weights cannot describe {_model_name(model)}: {name!r} is not a conv-BN-act layer"
            )
    if not layers:
        raise CheckpointError(f"darknet .weights need a model of conv-BN-act layers, not {_model_name(model)}")
    return layers


def _model_name(model: nn.Module) -> str:
    return getattr(model, "name", "") or type(model).__name__


def _layer_floats(layer: DarknetConv) -> int:
    per_row = layer.module.conv.weight[0].numel()
    return sum(rows * (4 + per_row) for rows in layer.row_splits)


class _Floats:
    """A cursor over the float32 payload."""

    def __init__(self, data: Tensor) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> Tensor:
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    @property
    def left(self) -> int:
        return self.data.numel() - self.pos


def read_header(raw: bytes) -> tuple[tuple[int, int, int, int], int]:
    """``((major, minor, revision, seen), header bytes)`` of a darknet weight file."""
    if len(raw) < 16:
        raise CheckpointError("darknet .weights file too short for its header")
    major, minor, revision = struct.unpack("<3i", raw[:12])
    if major * 10 + minor >= 2 and major < 1000 and minor < 1000:
        (seen,) = struct.unpack("<q", raw[12:20])
        return (major, minor, revision, seen), 20
    (seen,) = struct.unpack("<i", raw[12:16])
    return (major, minor, revision, seen), 16


def _read_layer(layer: DarknetConv, floats: _Floats) -> Iterator[tuple[str, Tensor]]:
    kernel = layer.module.conv.weight.shape[1:]
    parts: dict[str, list[Tensor]] = {"bias": [], "weight": [], "running_mean": [], "running_var": [], "conv": []}
    for rows in layer.row_splits:
        for key in ("bias", "weight", "running_mean", "running_var"):  # biases, scales, mean, var
            parts[key].append(floats.take(rows))
        parts["conv"].append(floats.take(rows * kernel.numel()).reshape(rows, *kernel))
    weight = torch.cat(parts.pop("conv"))
    if layer.rotate_in:
        weight = torch.cat([weight[:, layer.rotate_in :], weight[:, : layer.rotate_in]], dim=1)
    yield f"{layer.name}.conv.weight", weight
    for key, chunks in parts.items():
        yield f"{layer.name}.bn.{key}", torch.cat(chunks)


def read_floats(path: Path) -> _Floats:
    """The float32 payload of a darknet ``.weights`` file after its header, as a cursor."""
    raw = Path(path).read_bytes()
    _, offset = read_header(raw)
    payload = raw[offset:]
    if len(payload) % 4:
        raise CheckpointError(f"{path}: not a darknet .weights file ({len(payload)} payload bytes, not float32s)")
    return _Floats(torch.frombuffer(bytearray(payload), dtype=torch.float32))


def read_darknet_weights(path: Path, model: nn.Module) -> StateDict:
    """Read darknet ``.weights`` at ``path`` into a state dict for ``model`` (this library's layout)."""
    layers = darknet_layers(model)
    floats = read_floats(path)
    backbone = sum(_layer_floats(layer) for layer in layers)
    feat_chs = layers[-1].module.conv.weight.shape[0]
    leftover = floats.left - backbone
    if leftover < 0 or leftover % (feat_chs + 1):
        raise CheckpointError(
            f"{path} does not fit {_model_name(model)}: its {len(layers)} conv layers need {backbone:,} floats "
            f"plus a classifier of (num_classes x {feat_chs + 1}) floats, but the file holds {floats.left:,} "
            "floats after its header (a file for another network or a truncated download?)"
        )
    state: StateDict = {}
    for layer in layers:
        state.update(_read_layer(layer, floats))
    classes = leftover // (feat_chs + 1)
    if classes:
        state["head.fc.bias"] = floats.take(classes)
        state["head.fc.weight"] = floats.take(classes * feat_chs).reshape(classes, feat_chs)
    # Own the memory (the tensors are views of the file's buffer). BN's batch counter is not in
    # darknet's format; the model keeps its own.
    return {k: v.clone() for k, v in state.items()}


register_file_reader(".weights", read_darknet_weights)
