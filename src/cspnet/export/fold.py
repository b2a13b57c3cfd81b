"""Inference-time graph surgery: fold batch norms into the convolutions that feed them.

A convolution followed by its batch norm (eval mode) is one affine map per output channel, so the
pair can become a single convolution with a bias::

    W' = W * gamma / sqrt(var + eps)          b' = beta + (b - mean) * gamma / sqrt(var + eps)

The activation that :class:`~cspnet.layers.BatchNormAct2d` carries stays where the norm was. Pairs
are found generically, from the model's data flow: a ``Conv2d`` whose output is consumed by one
``BatchNorm2d`` (or ``BatchNormAct2d``) and nothing else. That covers every post-activation
``ConvNormAct`` of every family and DenseNet's bottleneck ``conv1 -> norm2``; pre-activation pairs
(norm -> act -> conv) cannot be folded and are left alone.

The data flow comes from a ``torch.fx`` trace that is used for analysis only: the model returned is
the original module tree with the pairs replaced in place, so it stays scriptable and traceable.
Models fx cannot trace fall back to the registration order (a conv immediately followed, inside the
same parent, by a norm of the same width), which is how every block of this library is written.
"""

from __future__ import annotations

import copy
import logging

import torch
import torch.fx
from torch import nn

from cspnet.layers.norm import BatchNormAct2d

log = logging.getLogger(__name__)

ConvNormPair = tuple[str, str]
"""(qualified name of the conv, qualified name of the norm that follows it)."""


class _NormLeafTracer(torch.fx.Tracer):
    """Keeps BatchNormAct2d whole so the graph shows conv -> norm edges instead of F.batch_norm calls."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, nn.BatchNorm2d) or super().is_leaf_module(m, module_qualified_name)


def _foldable(conv: nn.Module, norm: nn.Module) -> bool:
    return (
        type(conv) is nn.Conv2d
        and isinstance(norm, nn.BatchNorm2d)
        and norm.track_running_stats
        and norm.running_mean is not None
        and conv.out_channels == norm.num_features
    )


def _pairs_from_graph(model: nn.Module) -> list[ConvNormPair]:
    graph = _NormLeafTracer().trace(model)
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or len(node.users) != 1:
            continue
        (user,) = node.users
        if user.op != "call_module" or user.args[:1] != (node,) or len(user.args) + len(user.kwargs) != 1:
            continue
        conv_name, norm_name = str(node.target), str(user.target)
        # A module called at several places may not be rewritten for one of them.
        if calls[conv_name] != 1 or calls[norm_name] != 1:
            continue
        if _foldable(model.get_submodule(conv_name), model.get_submodule(norm_name)):
            pairs.append((conv_name, norm_name))
    return pairs


def _pairs_from_structure(model: nn.Module) -> list[ConvNormPair]:
    pairs = []
    for parent_name, parent in model.named_modules():
        children = list(parent.named_children())
        for (conv_name, conv), (norm_name, norm) in zip(children, children[1:]):
            if _foldable(conv, norm):
                prefix = f"{parent_name}." if parent_name else ""
                pairs.append((prefix + conv_name, prefix + norm_name))
    return pairs


def find_conv_norm_pairs(model: nn.Module) -> list[ConvNormPair]:
    """The (conv, norm) pairs of ``model`` that :func:`fold_conv_norm` can fold.

    >>> import cspnet
    >>> pairs = find_conv_norm_pairs(cspnet.create_model("densenet_bc100"))
    >>> pairs[:2]
    [('stem.conv1.conv', 'stem.conv1.bn'), ('stages.0.blocks.0.conv1', 'stages.0.blocks.0.norm2')]
    """
    try:
        return _pairs_from_graph(model)
    except Exception as exc:  # fx cannot trace data-dependent control flow; the structure still tells
        log.info("fx cannot trace %s (%s); folding by registration order", type(model).__name__, exc)
        return _pairs_from_structure(model)


@torch.no_grad()
def fold_conv_norm_(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> None:
    """Fold ``norm`` (eval-mode statistics) into ``conv`` in place; ``norm`` is no longer needed."""
    # float64 keeps the fold exact to fp32 rounding even for tiny running variances.
    scale = norm.weight.double() if norm.affine else torch.ones_like(norm.running_var, dtype=torch.float64)
    shift = norm.bias.double() if norm.affine else torch.zeros_like(scale)
    scale = scale / torch.sqrt(norm.running_var.double() + norm.eps)
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
    weight = conv.weight.double() * scale.reshape(-1, *([1] * (conv.weight.dim() - 1)))
    conv.weight.copy_(weight.to(conv.weight.dtype))
    new_bias = (shift + (bias - norm.running_mean.double()) * scale).to(conv.weight.dtype)
    if conv.bias is None:
        conv.bias = nn.Parameter(new_bias, requires_grad=conv.weight.requires_grad)
    else:
        conv.bias.copy_(new_bias)


def _norm_replacement(norm: nn.BatchNorm2d) -> nn.Module:
    """What stays of a folded norm: the activation of a BatchNormAct2d, nothing of a plain BN."""
    return norm.act if isinstance(norm, BatchNormAct2d) else nn.Identity()


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, attr, module)


def fold_conv_norm(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Fold every conv -> batch-norm pair of ``model`` (put in eval mode) and return it.

    The result computes the same function as ``model.eval()``; its state dict has no keys for the
    folded norms and a bias for each folded conv.

    >>> import cspnet, torch
    >>> model = cspnet.create_model("cspdensenet_bc100", num_classes=10).eval()
    >>> folded = fold_conv_norm(model)
    >>> x = torch.randn(2, 3, 32, 32)
    >>> torch.allclose(folded(x), model(x), rtol=1e-4, atol=1e-5)
    True
    """
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    pairs = find_conv_norm_pairs(model)
    for conv_name, norm_name in pairs:
        norm = model.get_submodule(norm_name)
        fold_conv_norm_(model.get_submodule(conv_name), norm)
        _set_submodule(model, norm_name, _norm_replacement(norm))
    log.info("folded %d conv/batch-norm pairs", len(pairs))
    return model


def optimize_for_inference(model: nn.Module, channels_last: bool = True, inplace: bool = False) -> nn.Module:
    """An eval-mode copy of ``model`` for fast inference: conv/BN folded, channels-last weights.

    The output equals ``model.eval()(x)`` up to fp32 rounding (~1e-6 relative). Feed it
    channels-last inputs (``x.to(memory_format=torch.channels_last)``) for the full speed-up on CPU;
    plain contiguous inputs work too. The result is an ordinary module: ``torch.jit.script``,
    ``torch.jit.trace`` and ``torch.onnx.export`` accept it.

    >>> import cspnet, torch
    >>> model = cspnet.create_model("cspdensenet_bc100", num_classes=10)
    >>> fast = optimize_for_inference(model)
    >>> x = torch.randn(2, 3, 32, 32).to(memory_format=torch.channels_last)
    >>> fast(x).shape, fast.training, model.training
    (torch.Size([2, 10]), False, True)
    """
    model = fold_conv_norm(model, inplace=inplace)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    for p in model.parameters():
        p.requires_grad_(False)
    return model
