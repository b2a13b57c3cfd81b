"""Count what the CSPNet paper counts, by running the model under PyTorch's own instrumentation.

Nothing here knows any architecture: multiply-adds come from
:class:`torch.utils.flop_counter.FlopCounterMode` (per module), layer inputs and outputs from forward
hooks, allocated tensors from a ``TorchDispatchMode``. The model runs once, on the ``meta`` device
(shapes only, no arithmetic), with a batch of one image; every figure is per image.

The conventions (see ``docs/profiling.md``):

``params``
    ``sum(p.numel())``: every parameter (BN affine, biases, classifier included; not buffers).
``conv_weight_params``
    The paper's #Parameter: convolution kernels plus fully connected weights, no biases, no BN.
    Darknet's classifier is a 1x1 conv after the global pool, which is exactly this library's
    ``nn.Linear`` head, so it counts (CSPDarknet-53: 26.582M conv + 1.024M classifier = 27.606M).
``macs``
    Multiply-adds of every op FlopCounterMode counts (convolutions, linear layers, matmuls): the
    torchvision / timm / fvcore "FLOPs" that are really MACs. BN, activations, pooling, additions
    and concatenations cost nothing.
``conv_macs``
    Multiply-adds of convolutions and fully connected layers only (darknet's conv layers,
    classifier included). Equal to ``macs`` for a pure CNN.
``darknet_bflops``
    ``2 * conv_macs / 1e9``: the paper's BFLOPs.
``cio``
    HarDNet's Convolutional Input/Output: the sum over conv, fully connected, max-pool and
    average-pool layers (the global average pool included) of input plus output elements. A CSP
    split made by one wide 1x1 conv (``CrossStagePartial.conv_exp``) counts its input twice,
    because the darknet cfgs the paper measured make it with two parallel 1x1 convs that each
    read the stage input. ``cio_fused_split`` is the same sum for the graph as built here.
``activations``
    Output elements of every conv and fully connected layer (fvcore's / timm's "activations").
``activation_bytes``
    Bytes of every tensor the forward pass allocates (each op's new output; views and in-place
    results excluded): what a training forward would keep if nothing were freed.
``peak_activation_bytes``
    The most bytes of forward-allocated tensors alive at once in an inference (``no_grad``) pass:
    the activation memory that inference needs (parameters and the input excluded).
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

# Layers whose input and output count towards CIO (HarDNet: convolution and pooling layers; darknet's
# fully connected classifier is a 1x1 conv).
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_FC = (nn.Linear,)
_POOL = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
)  # fmt: skip


@dataclass
class LayerCost:
    """One conv, fully connected or pooling layer, in execution order."""

    name: str
    kind: str  # "conv", "fc" or "pool"
    macs: int
    input_elems: int
    output_elems: int
    output_shape: tuple[int, ...]
    split_conv: bool = False  # a CSP split conv: darknet reads its input twice

    @property
    def cio(self) -> int:
        """Input plus output elements, the input twice for a CSP split conv (darknet's two 1x1 convs)."""
        return self.input_elems * (2 if self.split_conv else 1) + self.output_elems


@dataclass
class GroupCost:
    """The costs of one part of the network (``stem``, ``stages.0`` ... or ``head``)."""

    name: str
    params: int = 0
    conv_weight_params: int = 0
    macs: int = 0
    conv_macs: int = 0
    cio: int = 0
    activations: int = 0
    output_shape: tuple[int, ...] = ()

    @property
    def darknet_bflops(self) -> float:
        return 2 * self.conv_macs / 1e9


@dataclass
class ModelProfile:
    """The cost of one model at one input size, per image. See the module docstring for definitions.

    >>> import cspnet
    >>> p = cspnet.profiling.profile("densenet121", input_size=(3, 224, 224))
    >>> round(p.macs / 1e9, 3), p.params, [g.name for g in p.groups]
    (2.834, 7978856, ['stem', 'stages.0', 'stages.1', 'stages.2', 'stages.3', 'head'])
    """

    name: str
    input_size: tuple[int, int, int]
    params: int
    conv_weight_params: int
    macs: int
    conv_macs: int
    cio: int
    cio_fused_split: int
    activations: int
    activation_bytes: int
    peak_activation_bytes: int
    groups: list[GroupCost] = field(default_factory=list)
    layers: list[LayerCost] = field(default_factory=list)

    @property
    def darknet_bflops(self) -> float:
        """The paper's BFLOPs: ``2 * conv_macs / 1e9``."""
        return 2 * self.conv_macs / 1e9

    @property
    def gmacs(self) -> float:
        return self.macs / 1e9

    def to_dict(self, *, layers: bool = False) -> dict[str, Any]:
        """A JSON-ready dict: the totals, ``darknet_bflops``, ``groups`` and (optionally) ``layers``."""
        out = asdict(self)
        out["darknet_bflops"] = self.darknet_bflops
        out["input_size"] = list(self.input_size)
        out["groups"] = [{**asdict(g), "darknet_bflops": g.darknet_bflops} for g in self.groups]
        if not layers:
            del out["layers"]
        return out


def _resolve_model(model_or_name: nn.Module | str, overrides: dict[str, Any]) -> tuple[nn.Module, str]:
    from cspnet.models import create_model

    if isinstance(model_or_name, str):
        with torch.device("meta"):  # shapes only: no memory, no initialisation cost
            model = create_model(model_or_name, **overrides)
        return model, model_or_name
    if not isinstance(model_or_name, nn.Module):
        raise TypeError(f"profile() takes a model name or an nn.Module, not {type(model_or_name).__name__}")
    if overrides:
        raise ValueError("config overrides only apply to a registered model name")
    # A meta copy: the caller's model is untouched and nothing is computed.
    model = copy.deepcopy(model_or_name).to("meta")
    return model, getattr(model_or_name, "name", "") or type(model_or_name).__name__


def _default_input_size(model: nn.Module, name: str) -> tuple[int, int, int]:
    from cspnet.models import get_model_entry, list_models

    if name in list_models():
        return tuple(get_model_entry(name).input_size)  # type: ignore[return-value]
    return (3, 224, 224)


def _check_input_size(input_size: Sequence[int] | int, model: nn.Module) -> tuple[int, int, int]:
    if isinstance(input_size, int):
        input_size = (3, input_size, input_size)
    size = tuple(input_size)
    if len(size) != 3 or not all(isinstance(s, int) and not isinstance(s, bool) for s in size):
        raise ValueError(f"input_size={input_size!r} is invalid: expected (channels, height, width) integers")
    if min(size) < 1:
        raise ValueError(f"input_size={size!r} is invalid: every dimension must be positive")
    info = getattr(model, "feature_info", None)
    stride = info[-1]["reduction"] if info else 1
    if min(size[1:]) < stride:
        raise ValueError(
            f"input size {size[1]}x{size[2]} is too small: this network downsamples by {stride}, "
            f"so height and width must be at least {stride}"
        )
    return (size[0], size[1], size[2])


def _group_names(model: nn.Module) -> list[str]:
    """The parts a profile is broken into: the feature levels (``stem``, ``stages.i``), then ``head``."""
    info = getattr(model, "feature_info", None)
    if info:
        return [f["module"] for f in info] + ["head"]
    return [n for n, _ in model.named_children()]


def _group_of(module_name: str, groups: Sequence[str]) -> str:
    for g in groups:
        if module_name == g or module_name.startswith(g + "."):
            return g
    # Everything after the last feature level (final norm, pooling, classifier) is the head.
    return "head" if "head" in groups else module_name.split(".")[0]


def _split_conv_names(model: nn.Module) -> set[str]:
    """The first conv of every CSP split conv (``conv_exp`` of a stage with a bypass)."""
    from cspnet.layers import CrossStagePartial

    names = set()
    for stage_name, stage in model.named_modules():
        if isinstance(stage, CrossStagePartial) and stage.bypass_chs > 0:
            for sub_name, sub in stage.conv_exp.named_modules():
                if isinstance(sub, _CONV):
                    names.add(".".join(p for p in (stage_name, "conv_exp", sub_name) if p))
                    break
    return names


class AllocationTracker(TorchDispatchMode):
    """Sums the bytes of every new tensor an op returns and the peak of those alive at once.

    Subclasses may count more per new tensor in :meth:`on_new_tensor` (the detection necks' cost
    comparison counts the concatenations apart).
    """

    def __init__(self) -> None:
        super().__init__()
        self.total = 0
        self.live = 0
        self.peak = 0

    def _release(self, nbytes: int) -> None:
        self.live -= nbytes

    def __torch_dispatch__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        out = func(*args, **(kwargs or {}))
        # Views and in-place ops return (aliases of) existing tensors: no new memory.
        if any(r.alias_info is not None for r in func._schema.returns):
            return out
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                nbytes = t.numel() * t.element_size()
                self.total += nbytes
                self.live += nbytes
                self.peak = max(self.peak, self.live)
                self.on_new_tensor(func, nbytes)
                weakref.finalize(t, self._release, nbytes)
        return out

    def on_new_tensor(self, func: Any, nbytes: int) -> None:
        """Called for every new tensor an op returns (after the totals are updated)."""


OutputHook = Callable[[str, nn.Module, tuple[Any, ...], Any], None]
"""``on_output(module name, module, inputs, output)``, called after the module ran."""


def _run(model: nn.Module, x: torch.Tensor, hooked: set[str], on_output: OutputHook) -> dict[str, dict[Any, int]]:
    """Run ``model(x)`` under FlopCounterMode, calling ``on_output(name, module, inputs, output)``
    after each module in ``hooked``; returns FlopCounterMode's per-module counts."""
    handles = [
        m.register_forward_hook(lambda mod, inp, out, name=name: on_output(name, mod, inp, out))
        for name, m in model.named_modules()
        if name in hooked
    ]
    counter = FlopCounterMode(display=False)  # per-module counts at every depth; depth only shapes the table
    try:
        with torch.no_grad(), counter:
            model(x)
    finally:
        for h in handles:
            h.remove()
    return counter.get_flop_counts()


def _group_costs(
    model: nn.Module,
    groups: list[str],
    layers: list[LayerCost],
    flops_of: dict[str, dict[Any, int]],
    total_macs: int,
) -> dict[str, GroupCost]:
    """The costs summed per part (``stem``, ``stages.i``, ``head``) from the per-layer records."""
    by_group = {g: GroupCost(g) for g in groups}

    def group(module_name: str) -> GroupCost:
        name = _group_of(module_name, groups)
        return by_group.setdefault(name, GroupCost(name))

    for pname, p in model.named_parameters():
        group(pname).params += p.numel()
    for mname, m in model.named_modules():
        if isinstance(m, _CONV + _FC):
            group(mname).conv_weight_params += m.weight.numel()
    for layer in layers:
        g = group(layer.name)
        if layer.kind != "pool":
            g.conv_macs += layer.macs
            g.activations += layer.output_elems
        g.cio += layer.cio
    for gname, g in by_group.items():
        g.macs = sum(flops_of.get(gname, {}).values()) // 2
    # The head is everything outside the feature levels (final norm, pool, classifier).
    if "head" in by_group:
        by_group["head"].macs = total_macs - sum(g.macs for n, g in by_group.items() if n != "head")
    return by_group


def profile(    model_or_name: nn.Module | str,
    input_size: Sequence[int] | int | None = None,
    **overrides: Any,
) -> ModelProfile:
    """Profile a registered model (by name, with optional config ``overrides``) or any ``nn.Module``.

    Args:
        model_or_name: a name from :func:`cspnet.list_models` or a module taking ``(N, C, H, W)``.
        input_size: ``(C, H, W)`` or a side length; default: the registered model's input size
            (224x224 for an unregistered module).
        **overrides: config fields for a registered name (``partial_ratio=0.25``, ``fusion=...``).

    Raises:
        ValueError: an unknown name, a bad override, or an input too small for the network.

    >>> p = profile("cspdensenet121", 224, partial_ratio=0.25)
    >>> p.input_size, p.groups[-2].output_shape
    ((3, 224, 224), (1024, 7, 7))
    """
    model, name = _resolve_model(model_or_name, overrides)
    model.eval()
    if input_size is None:
        input_size = _default_input_size(model, name)
    size = _check_input_size(input_size, model)
    groups = _group_names(model)
    split_convs = _split_conv_names(model)

    layers: list[LayerCost] = []
    group_shapes: dict[str, tuple[int, ...]] = {}
    layer_names = {n for n, m in model.named_modules() if isinstance(m, _CONV + _FC + _POOL)}

    def on_output(name: str, mod: nn.Module, inp: tuple, out: Any) -> None:
        if name in groups and isinstance(out, torch.Tensor):
            group_shapes[name] = tuple(out.shape[1:])
        if name not in layer_names:
            return
        kind = "conv" if isinstance(mod, _CONV) else "fc" if isinstance(mod, _FC) else "pool"
        layers.append(
            LayerCost(name, kind, 0, inp[0].numel(), out.numel(), tuple(out.shape[1:]), name in split_convs)
        )

    x = torch.empty(1, *size, device="meta")
    tracker = AllocationTracker()
    try:
        with tracker:
            counts = _run(model, x, layer_names | set(groups), on_output)
    except RuntimeError as exc:  # e.g. a kernel larger than a feature map
        raise ValueError(
            f"input size {size[1]}x{size[2]} does not fit this network: {exc}".splitlines()[0]
        ) from None

    # FlopCounterMode names modules by their path below the root's class name; it counts 2 per MAC.
    root = type(model).__name__
    flops_of = {k.removeprefix(root + ".") if k != root else "": v for k, v in counts.items()}
    for layer in layers:
        layer.macs = sum(flops_of.get(layer.name, {}).values()) // 2

    total_macs = sum(counts.get("Global", {}).values()) // 2
    by_group = _group_costs(model, groups, layers, flops_of, total_macs)
    for gname, g in by_group.items():
        g.output_shape = group_shapes.get(gname, ())

    return ModelProfile(
        name=name,
        input_size=size,
        params=sum(p.numel() for p in model.parameters()),
        conv_weight_params=sum(g.conv_weight_params for g in by_group.values()),
        macs=total_macs,
        conv_macs=sum(g.conv_macs for g in by_group.values()),
        cio=sum(g.cio for g in by_group.values()),
        cio_fused_split=sum(lc.input_elems + lc.output_elems for lc in layers),
        activations=sum(g.activations for g in by_group.values()),
        activation_bytes=tracker.total,
        peak_activation_bytes=tracker.peak,
        groups=list(by_group.values()),
        layers=layers,
    )


def profile_many(
    names: Iterable[str], input_size: Sequence[int] | int | None = None, **overrides: Any
) -> list[ModelProfile]:
    """:func:`profile` for each name, at one input size (or each model's own)."""
    return [profile(n, input_size, **overrides) for n in names]
