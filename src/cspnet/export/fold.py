"""Inference-time graph surgery: fold batch norms into convolutions, move pools before 1x1 convs.

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

The same data flow finds a 1x1 convolution whose only consumer is an average pool (DenseNet's
transition, CSPDenseNet's U): the two commute, and pooling first makes the conv 4x cheaper.
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


ModulePair = tuple[str, str]
"""(qualified name of a module, qualified name of the one module that consumes its output)."""


def _single_consumer_pairs(graph: torch.fx.Graph) -> list[ModulePair]:
    """Module pairs ``(a, b)`` where ``b(a(x))`` is the only use of ``a``'s output, each called once."""
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
        # A module called at several places may not be rewritten for one of them.
        if calls[str(node.target)] == 1 and calls[str(user.target)] == 1:
            pairs.append((str(node.target), str(user.target)))
    return pairs


def _pairs_from_graph(model: nn.Module) -> list[ConvNormPair]:
    pairs = _single_consumer_pairs(_NormLeafTracer().trace(model))
    return [(a, b) for a, b in pairs if _foldable(model.get_submodule(a), model.get_submodule(b))]


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
    mean, var = norm.running_mean, norm.running_var
    if mean is None or var is None:
        raise ValueError("a batch norm without running statistics (track_running_stats=False) cannot be folded")
    # float64 keeps the fold exact to fp32 rounding even for tiny running variances.
    scale = norm.weight.double() if norm.affine else torch.ones_like(var, dtype=torch.float64)
    shift = norm.bias.double() if norm.affine else torch.zeros_like(scale)
    scale = scale / torch.sqrt(var.double() + norm.eps)
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
    weight = conv.weight.double() * scale.reshape(-1, *([1] * (conv.weight.dim() - 1)))
    conv.weight.copy_(weight.to(conv.weight.dtype))
    new_bias = (shift + (bias - mean.double()) * scale).to(conv.weight.dtype)
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
        conv, norm = model.get_submodule(conv_name), model.get_submodule(norm_name)
        assert isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d)  # what _foldable admits
        fold_conv_norm_(conv, norm)
        _set_submodule(model, norm_name, _norm_replacement(norm))
    log.info("folded %d conv/batch-norm pairs", len(pairs))
    return model


class PoolThenConv(nn.Module):
    """``conv(pool(x))``: a pointwise convolution moved behind the average pool that followed it."""

    def __init__(self, pool: nn.Module, conv: nn.Module) -> None:
        super().__init__()
        self.pool = pool
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.pool(x))


def _commutes(conv: nn.Module, pool: nn.Module) -> bool:
    # A 1x1 stride-1 conv is the same affine map at every pixel and an unpadded average pool is a
    # per-channel convex combination of pixels, so the two commute (the bias survives the average).
    # Padding would average in zeros that the conv's bias never saw; a divisor override rescales it.
    return (
        type(conv) is nn.Conv2d
        and conv.kernel_size == (1, 1)
        and conv.stride == (1, 1)
        and conv.padding in ((0, 0), "valid")
        and type(pool) is nn.AvgPool2d
        and pool.padding in (0, (0, 0))
        and pool.divisor_override is None
    )


def find_conv_pool_pairs(model: nn.Module) -> list[ModulePair]:
    """The (1x1 conv, average pool) pairs of ``model`` that :func:`pool_before_pointwise_conv` swaps.

    DenseNet's transition (BN-ReLU-1x1 conv, then the next stage's 2x2 average pool) and the
    partial transition U of CSPDenseNet are such pairs; a conv whose output is also used elsewhere
    (a ``features_only`` output, say) is not. Models fx cannot trace have none.

    >>> import cspnet
    >>> find_conv_pool_pairs(cspnet.create_model("densenet121"))[0]
    ('stages.0.conv_transition.conv', 'stages.1.down')
    >>> find_conv_pool_pairs(cspnet.create_model("densenet121", features_only=True))
    []
    """
    try:
        graph = _NormLeafTracer().trace(model)
    except Exception as exc:
        log.info("fx cannot trace %s (%s); no pools moved", type(model).__name__, exc)
        return []
    pairs = _single_consumer_pairs(graph)
    return [(a, b) for a, b in pairs if _commutes(model.get_submodule(a), model.get_submodule(b))]


def pool_before_pointwise_conv(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Run every 1x1 conv that feeds only an average pool *after* that pool instead.

    The function is unchanged (up to rounding) and the conv does a quarter of the work behind a 2x2
    pool: 8 % of DenseNet-121's multiply-accumulates. Stages whose output is pooled by the next
    stage then return the pooled map, so call it on a finished model, not on one whose stages you
    run one by one.

    >>> import cspnet, torch
    >>> model = cspnet.create_model("densenet_bc100", num_classes=10).eval()
    >>> fast = pool_before_pointwise_conv(model)
    >>> type(fast.stages[0].conv_transition.conv).__name__, type(fast.stages[1].down).__name__
    ('PoolThenConv', 'Identity')
    >>> x = torch.randn(2, 3, 32, 32)
    >>> reference = model(x)   # an untrained network in eval mode: outputs in the tens of thousands
    >>> bool((fast(x) - reference).abs().max() <= 1e-5 * reference.abs().max())
    True
    """
    if not inplace:
        model = copy.deepcopy(model)
    pairs = find_conv_pool_pairs(model)
    for conv_name, pool_name in pairs:
        pool = model.get_submodule(pool_name)
        _set_submodule(model, conv_name, PoolThenConv(pool, model.get_submodule(conv_name)))
        _set_submodule(model, pool_name, nn.Identity())
    log.info("moved %d average pools before their 1x1 convs", len(pairs))
    return model


def optimize_for_inference(
    model: nn.Module,
    channels_last: bool = True,
    inplace: bool = False,
    dtype: torch.dtype | None = None,
) -> nn.Module:
    """An eval-mode copy of ``model`` for fast inference.

    Three exact rewrites (:func:`fold_conv_norm`, :func:`pool_before_pointwise_conv`, channels-last
    weights) and, if asked, a cast. In fp32 the output equals ``model.eval()(x)`` up to rounding
    (~1e-6 relative). Feed it channels-last inputs (``x.to(memory_format=torch.channels_last)``)
    for the full speed-up on CPU; plain contiguous inputs work too. The result is an ordinary
    module: ``torch.jit.script``, ``torch.jit.trace`` and ``torch.onnx.export`` accept it.

    Args:
        model: any model of this library (or any module fx can trace).
        channels_last: store the weights channels-last (the fast layout of oneDNN on CPU).
        inplace: rewrite ``model`` itself instead of a copy.
        dtype: cast the weights, e.g. ``torch.bfloat16``: twice the fp32 speed on CPUs with
            AVX-512 BF16 or AMX, at about 3 significant digits (see ``docs/benchmarks.md``). Inputs
            must then have that dtype, and so will the output.

    >>> import cspnet, torch
    >>> model = cspnet.create_model("cspdensenet_bc100", num_classes=10)
    >>> fast = optimize_for_inference(model)
    >>> x = torch.randn(2, 3, 32, 32).to(memory_format=torch.channels_last)
    >>> fast(x).shape, fast.training, model.training
    (torch.Size([2, 10]), False, True)
    >>> optimize_for_inference(model, dtype=torch.bfloat16)(x.bfloat16()).dtype
    torch.bfloat16
    """
    model = fold_conv_norm(model, inplace=inplace)
    model = pool_before_pointwise_conv(model, inplace=True)
    if channels_last:
        # Module.to takes memory_format at run time; torch's type stubs leave it out.
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    if dtype is not None:
        model = model.to(dtype)
    for p in model.parameters():
        p.requires_grad_(False)
    return model
