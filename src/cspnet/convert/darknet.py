"""Darknet ``.weights`` files -> this library's layout: the one ``.weights`` reader, for the ``_paper``
ResNe(X)t / Darknet classifiers and every model that states its darknet layer order (the detectors).

The format (darknet's ``save_weights``): a header of int32 ``major, minor, revision`` and ``seen``
(int64 when ``major * 10 + minor >= 2``, else int32), then, for every ``[convolutional]`` layer in cfg
order, float32 arrays: with ``batch_normalize=1`` ``biases`` (BN beta), ``scales`` (gamma),
``rolling_mean``, ``rolling_var``, then the kernel; without BN (the classifier) ``biases`` then the
kernel. Nothing else carries weights (``[shortcut]``, ``[route]``, pools).

:func:`write_darknet_weights` is the inverse: a model of this library -> a ``.weights`` file that
darknet, OpenCV's DNN module (``cv2.dnn.readNetFromDarknet``) and the reader here load with the
model's cfg (a benchmark runs the same weights in both; a user takes a trained model back to darknet).

The cfg order of a model here is its module order, with two differences a CSP stage needs:

* the two parallel split convs of the cfg (bypass, then block path) are the two row blocks of one
  ``conv_exp`` (bypass rows first), so they are read one after the other and stacked;
* the cfg concatenates ``[T output, bypass]`` before U, this library ``[bypass, T output]``, so U's
  input channels are rotated on reading.

Both hold for a CSP stage anywhere in a model (:func:`csp_conv_layers`), a detector's CSP neck included.

Layers with biases and no batch norm whose size depends on the class count (a classifier, ``head.fc``,
a 1x1 conv after the global pool; a detector's prediction convs) come in the model's
:class:`DarknetLayout` as :class:`DarknetOutput`; the file's class count is inferred from the floats
left after the fixed layers, so a file for 1000 classes loads into a model with another
``num_classes`` with everything but those layers. A model states its order with a
``darknet_layout()`` method (the detectors); without one it is read as a classifier
(:func:`classifier_layout`).
"""

from __future__ import annotations

import logging
import math
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from cspnet.convert.checkpoint import CheckpointError, StateDict, register_file_reader
from cspnet.layers.cross_stage import CrossStagePartial
from cspnet.layers.norm import ConvNormAct

log = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class DarknetOutput:
    """A layer with ``biases`` and no batch norm whose rows depend on the class count:
    ``fixed_rows + rows_per_class * classes`` (a classifier: ``0 + 1``; a YOLO prediction conv:
    ``A * 5 + A``). ``row_shape`` is the shape of one row of its weight; ``model_rows`` the rows the
    model has (0: the model has no such layer, e.g. a backbone built with ``num_classes=0``).
    """

    name: str
    row_shape: tuple[int, ...]
    fixed_rows: int
    rows_per_class: int
    model_rows: int

    def rows(self, classes: int) -> int:
        return self.fixed_rows + self.rows_per_class * classes

    @property
    def row_floats(self) -> int:
        """Floats per row: the bias and the weights."""
        return 1 + math.prod(self.row_shape)


@dataclass(frozen=True)
class DarknetLayout:
    """A model's weighted layers in darknet file order, as the one ``.weights`` reader reads them.

    ``backbone``: how many leading layers a backbone-only file (darknet's ``partial`` output, e.g.
    ``csdarknet53.conv.105``) holds; ``outputs``: what the class-dependent layers are, for messages.
    A model whose darknet order is not its classifier layout (:func:`classifier_layout`) provides
    a ``darknet_layout()`` method returning one (the detectors do), so this module never imports
    the models.
    """

    layers: tuple[DarknetConv | DarknetOutput, ...]
    backbone: int
    outputs: str = "classifier"


def csp_conv_layers(module: nn.Module, prefix: str = "") -> list[DarknetConv]:
    """The conv-BN layers of ``module`` in module order (= cfg order), each CSP stage's permutation included.

    Every :class:`~cspnet.layers.CrossStagePartial` with a bypass inside ``module`` is read as the
    cfgs write it: the two split convs (bypass rows, then block-path rows) are the row blocks of
    ``conv_exp``, and U's input is darknet's ``[block path, bypass]``, rotated here to ``[bypass,
    block path]``. A conv that is not a conv-BN-act layer, or a CSP stage without U (whose
    concatenation would reach the next layer in darknet's order), raises :class:`CheckpointError`.
    """
    csp_parts: dict[str, tuple[int, int]] = {}  # module name -> (bypass channels, role: 0 exp, 1 U)
    for name, stage in module.named_modules():
        if isinstance(stage, CrossStagePartial) and stage.bypass_chs > 0:
            if not isinstance(stage.conv_transition, ConvNormAct):
                raise CheckpointError(
                    f"darknet .weights cannot describe {_joined(prefix, name)}: a CSP stage without U (fusion_last) "
                    "passes its concatenation on in another channel order than darknet's"
                )
            csp_parts[_joined(name, "conv_exp")] = (stage.bypass_chs, 0)
            csp_parts[_joined(name, "conv_transition")] = (stage.bypass_chs, 1)
    layers: list[DarknetConv] = []
    convs_with_bn = {id(m.conv) for m in module.modules() if isinstance(m, ConvNormAct)}
    for name, part in module.named_modules():
        if isinstance(part, ConvNormAct):
            out_chs, in_chs = part.conv.weight.shape[:2]
            bypass, role = csp_parts.get(name, (0, -1))
            if role == 0:
                layers.append(DarknetConv(_joined(prefix, name), part, (bypass, out_chs - bypass)))
            elif role == 1:
                # darknet's input is [T (in - bypass channels), bypass]; ours is [bypass, T].
                layers.append(DarknetConv(_joined(prefix, name), part, (out_chs,), rotate_in=in_chs - bypass))
            else:
                layers.append(DarknetConv(_joined(prefix, name), part, (out_chs,)))
        elif isinstance(part, nn.Conv2d) and id(part) not in convs_with_bn:
            raise CheckpointError(f"darknet .weights cannot describe {_joined(prefix, name)}: not a conv-BN-act layer")
    return layers


def _joined(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix and name else prefix or name


def darknet_layers(model: nn.Module) -> list[DarknetConv]:
    """A classification model's BN convs in darknet cfg order (the classifier excluded).

    Raises :class:`CheckpointError` for a model whose layers darknet's format cannot describe.
    """
    stages = getattr(model, "stages", None)
    if stages is None or not all(isinstance(s, CrossStagePartial) for s in stages):
        raise CheckpointError(
            f"darknet .weights need a ResNe(X)t / Darknet-style model (CSP or plain stages), not {_model_name(model)}"
        )
    try:
        layers = csp_conv_layers(model)
    except CheckpointError as error:
        raise CheckpointError(f"{_model_name(model)}: {error}") from None
    if not layers:
        raise CheckpointError(f"darknet .weights need a model of conv-BN-act layers, not {_model_name(model)}")
    return layers


def classifier_layout(model: nn.Module) -> DarknetLayout:
    """The darknet layout of a classification model: its BN convs, then the classifier ``head.fc``
    (darknet's 1x1 conv after the global pool; absent from the model when ``num_classes=0``)."""
    layers = darknet_layers(model)
    fc = getattr(getattr(model, "head", None), "fc", None)
    feat_chs = layers[-1].module.conv.weight.shape[0]
    rows = fc.weight.shape[0] if isinstance(fc, nn.Linear) else 0
    classifier = DarknetOutput("head.fc", (feat_chs,), 0, 1, rows)
    return DarknetLayout((*layers, classifier), backbone=len(layers))


def darknet_layout(model: nn.Module) -> DarknetLayout:
    """``model.darknet_layout()`` where the model provides it, else :func:`classifier_layout`."""
    hook = getattr(model, "darknet_layout", None)
    if callable(hook):
        layout = hook()
        assert isinstance(layout, DarknetLayout)
        return layout
    return classifier_layout(model)


def _model_name(model: nn.Module) -> str:
    return getattr(model, "name", "") or type(model).__name__


def layer_floats(layer: DarknetConv | DarknetOutput, classes: int = 0) -> int:
    """Floats of ``layer`` in a file (a class-dependent layer: for ``classes`` classes)."""
    if isinstance(layer, DarknetOutput):
        return layer.rows(classes) * layer.row_floats
    per_row = layer.module.conv.weight[0].numel()
    return sum(rows * (4 + per_row) for rows in layer.row_splits)


class Floats:
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


def read_layer(layer: DarknetConv, floats: Floats) -> Iterator[tuple[str, Tensor]]:
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


def read_floats(path: Path) -> Floats:
    """The float32 payload of a darknet ``.weights`` file after its header, as a cursor."""
    raw = Path(path).read_bytes()
    _, offset = read_header(raw)
    payload = raw[offset:]
    if len(payload) % 4:
        raise CheckpointError(f"{path}: not a darknet .weights file ({len(payload)} payload bytes, not float32s)")
    return Floats(torch.frombuffer(bytearray(payload), dtype=torch.float32))


def read_darknet_weights(path: Path, model: nn.Module) -> StateDict:
    """Read darknet ``.weights`` at ``path`` into a state dict for ``model`` (this library's layout).

    The model's layout (:func:`darknet_layout`) says what the file holds. Besides a complete file:

    * a backbone-only file (darknet's ``partial``): the backbone, the rest keeps the model's values;
    * a file for another number of classes (inferred from its size): every layer but the
      class-dependent ones, which keep the model's values (a warning says so).
    """
    layout = darknet_layout(model)
    floats = read_floats(path)
    name = _model_name(model)
    backbone = sum(layer_floats(layer) for layer in layout.layers[: layout.backbone])
    fixed = sum(layer_floats(layer) for layer in layout.layers)
    per_class = sum(layer_floats(layer, 1) - layer_floats(layer) for layer in layout.layers)
    own = model.state_dict()
    if floats.left == backbone and backbone < fixed:
        state: StateDict = {}
        for layer in layout.layers[: layout.backbone]:
            state.update(_read(layer, floats, 0))
        _warn(path, f"a backbone-only file: the layers after the first {layout.backbone} keep their initialisation")
        return {**own, **{k: v.clone() for k, v in state.items()}}
    extra = floats.left - fixed
    if extra < 0 or (extra % per_class if per_class else extra):
        convs = sum(isinstance(layer, DarknetConv) for layer in layout.layers)
        raise CheckpointError(
            f"{path} does not fit {name}: its {convs} conv layers and {layout.outputs} need {fixed:,} floats plus "
            f"{per_class:,} per class, but the file holds {floats.left:,} floats after its header (a file for "
            "another network or a truncated download?)"
        )
    classes = extra // per_class if per_class else 0
    state = {}
    model_classes = classes
    for layer in layout.layers:
        parts = dict(_read(layer, floats, classes))
        if isinstance(layer, DarknetOutput) and layer.rows(classes) != layer.model_rows:
            # Another class count: the model keeps its own layer (nothing, where it has none).
            model_classes = max(0, layer.model_rows - layer.fixed_rows) // layer.rows_per_class
            parts = {k: own[k] for k in parts if k in own}
        elif isinstance(layer, DarknetOutput) and not layer.model_rows:
            parts = {}
        state.update(parts)
    if model_classes != classes:
        # The words of load_weights' note on a classifier of another size: one message for one event.
        _warn(path, f"{layout.outputs} not loaded: the checkpoint has {classes} classes, the model {model_classes} "
                    "(it keeps its fresh random initialisation)")  # fmt: skip
    # Own the memory (the tensors are views of the file's buffer). BN's batch counter is not in
    # darknet's format; the model keeps its own.
    return {k: v.clone() for k, v in state.items()}


def _read(layer: DarknetConv | DarknetOutput, floats: Floats, classes: int) -> Iterator[tuple[str, Tensor]]:
    if isinstance(layer, DarknetConv):
        yield from read_layer(layer, floats)
        return
    rows = layer.rows(classes)
    yield f"{layer.name}.bias", floats.take(rows)
    yield f"{layer.name}.weight", floats.take(rows * (layer.row_floats - 1)).reshape(rows, *layer.row_shape)


def _warn(path: Path, message: str) -> None:
    log.warning("%s: %s", path, message)


def write_layer(layer: DarknetConv) -> Iterator[Tensor]:
    """:func:`read_layer` backwards: the float32 arrays of ``layer`` in file order."""
    conv, bn = layer.module.conv, layer.module.bn
    stats = (bn.bias, bn.weight, bn.running_mean, bn.running_var)  # biases, scales, mean, var
    if not isinstance(bn, nn.BatchNorm2d) or any(t is None for t in stats):
        raise CheckpointError(f"darknet .weights cannot describe {layer.name}: its norm is not an affine batch norm")
    weight = conv.weight.detach()
    if layer.rotate_in:  # ours [bypass, T] -> darknet's [T, bypass]
        cut = weight.shape[1] - layer.rotate_in
        weight = torch.cat([weight[:, cut:], weight[:, :cut]], dim=1)
    start = 0
    for rows in layer.row_splits:
        rows_of = slice(start, start + rows)
        yield from (t.detach()[rows_of] for t in stats if t is not None)
        yield weight[rows_of]
        start += rows


DARKNET_VERSION = (0, 2, 5)  # major, minor, revision of the files darknet writes today (int64 ``seen``)


def write_darknet_weights(model: nn.Module, path: str | os.PathLike[str], seen: int = 0) -> Path:
    """Write ``model``'s weights as a darknet ``.weights`` file (the layout :func:`darknet_layout` gives).

    The file is what darknet's ``save_weights`` writes for the model's cfg, so darknet, OpenCV's DNN
    module and :func:`read_darknet_weights` read it back (the round trip is exact). Written
    atomically; a model darknet's format cannot describe raises :class:`CheckpointError`.

    >>> import tempfile, torch, cspnet
    >>> model = cspnet.create_model("darknet53_paper", depths=(1, 1, 1, 1, 1), num_classes=3)
    >>> path = write_darknet_weights(model, Path(tempfile.mkdtemp()) / "d.weights")
    >>> again = cspnet.create_model("darknet53_paper", depths=(1, 1, 1, 1, 1), num_classes=3, pretrained=path)
    >>> all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    True
    """
    from cspnet.io import atomic_write_bytes

    layout = darknet_layout(model)
    state = model.state_dict()
    arrays: list[Tensor] = []
    for layer in layout.layers:
        if isinstance(layer, DarknetConv):
            arrays += write_layer(layer)
        elif layer.model_rows:  # biases, then the kernel
            arrays += [state[f"{layer.name}.bias"], state[f"{layer.name}.weight"]]
    payload = torch.cat([a.detach().float().cpu().flatten() for a in arrays]).numpy().tobytes()
    return atomic_write_bytes(path, struct.pack("<3iq", *DARKNET_VERSION, seen) + payload)


register_file_reader(".weights", read_darknet_weights)
