"""The cross stage partial stage: one module that wraps any stack of blocks, and the factory that sizes it.

CSPNet (Wang et al., 2020) turns a stage ``y = T(F(x))`` of any backbone into::

    x  = down(x)                       # optional: strided conv or pooling that opens the stage
    x  = conv_exp(x)                   # optional: 1x1 conv whose output is split (the darknet cfgs' two 1x1s)
    x', x'' = x[:, :bypass], x[:, bypass:]
    y  = conv_transition([x', conv_transition_b(blocks(x''))])

``x'`` (the first ``bypass_chs`` channels) skips the blocks and meets their output at the end of the
stage; ``conv_transition_b`` (the paper's T) and ``conv_transition`` (the paper's U) are the *partial
transition*. Which of the two exist is the fusion strategy of the paper's Figure 3::

    fusion        dense path                   after the concatenation
    "csp"         blocks -> T -> concat         -> U          (Fig. 3b, CSPDenseNet)
    "fusion_first" blocks ------> concat        -> U          (Fig. 3c)
    "fusion_last" blocks -> T -> concat                       (Fig. 3d)

With ``bypass_chs == 0`` the module is the plain stage of the baseline network (``down -> blocks ->
transition``), so a DenseNet, ResNet or Darknet stage and its CSP twin are the same class.

Channel order of the concatenation is ``[bypass, block path]`` (timm's order; the darknet cfgs
concatenate ``[block path, bypass]``, which the darknet weight reader permutes on load).

Every family sizes its stages through one factory, so the CSP rules live here only:

* :func:`plan_stage` turns what a family knows about a stage (its input width, gamma, the fusion,
  the baseline stage's output width, an optional split conv, how wide its blocks come out) into a
  :class:`StagePlan`: the width of every part. Config validation calls it without building anything.
* :meth:`CrossStagePartial.build` builds the stage of a plan from the family's parts (the blocks,
  the transition conv, the split conv); :func:`transition_pool_slots` says where a family whose
  transition ends in a pool (DenseNet, PeleeNet) puts that pool.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from cspnet.layers.checkpoint import checkpoint_once

Fusion = Literal["csp", "fusion_first", "fusion_last"]

# The one place that says what a fusion strategy is: (T on the block path, U after the concatenation).
_PARTIAL_TRANSITIONS: dict[str, tuple[bool, bool]] = {
    "csp": (True, True),
    "fusion_first": (False, True),
    "fusion_last": (True, False),
}
FUSIONS: tuple[str, ...] = tuple(_PARTIAL_TRANSITIONS)

TRANSITION_POOLS: tuple[str, ...] = ("after", "before")
"""Where the pool of a pooling transition goes: ``"after"`` U (it opens the next stage, the baseline's
order) or ``"before"`` U (between the concatenation and U, so U runs on the pooled map)."""


def split_channels(chs: int, partial_ratio: float, multiple: int = 1) -> tuple[int, int]:
    """Split ``chs`` into (bypass, block path) channels; ``partial_ratio`` is the paper's gamma.

    gamma is the fraction that *bypasses* the blocks: the paper's ablation (larger gamma saves more
    computation) only makes sense that way. With ``multiple`` > 1 (the group count of grouped convs
    that read either part) the bypass is the nearest multiple of it, and so is the block path when
    ``chs`` is one.

    >>> split_channels(64, 0.5)
    (32, 32)
    >>> split_channels(64, 0.25)
    (16, 48)
    >>> split_channels(192, 0.25, multiple=32), split_channels(192, 0.75, multiple=32)
    ((64, 128), (128, 64))
    """
    bypass = multiple * int(round(chs * partial_ratio / multiple))
    if partial_ratio > 0 and bypass == 0:
        bypass = min(multiple, chs)
    if bypass >= chs and multiple > 1 and chs > multiple and partial_ratio < 1:
        bypass = chs - multiple  # a group's worth is left for the blocks
    if bypass >= chs:
        raise ValueError(f"partial_ratio={partial_ratio} leaves no channels for the blocks of a {chs}-channel stage")
    return bypass, chs - bypass


@dataclass(frozen=True)
class StagePlan:
    """The width of every part of one (CSP) stage; made by :func:`plan_stage`, built by
    :meth:`CrossStagePartial.build`.

    ``exp_chs``, ``transition_b_chs`` and ``transition_chs`` are ``None`` where the stage has no
    split conv, no T or no U.
    """

    in_chs: int
    """The stage's input width, after ``down``."""
    exp_chs: int | None
    """Output width of the split conv ``conv_exp`` (``None``: the input is split as it comes)."""
    bypass_chs: int
    """Width of the cross-stage part x' (0: a plain stage)."""
    block_in_chs: int
    block_out_chs: int
    transition_b_chs: int | None
    """Output width of T (``conv_transition_b``) on the block path."""
    transition_chs: int | None
    """Output width of U (``conv_transition``) after the concatenation."""
    out_chs: int
    """The stage's output width."""

    @property
    def cat_chs(self) -> int:
        """Width of the concatenation ``[x', T(blocks(x''))]`` (the block output where there is no T)."""
        path = self.block_out_chs if self.transition_b_chs is None else self.transition_b_chs
        return self.bypass_chs + path


def plan_stage(
    in_chs: int,
    partial_ratio: float,
    block_out_chs: int | Callable[[int], int],
    *,
    fusion: str = "csp",
    out_chs: int | None = None,
    exp_chs: int | None = None,
    transition_b_ratio: float | None = None,
    partial_transition: bool = True,
    plain_transition: bool = True,
    multiple: int = 1,
    stage: int | None = None,
) -> StagePlan:
    """The widths of one stage: the CSP split, T, U and the output (every family asks this).

    Args:
        in_chs: the stage's input width (after its opening ``down``).
        partial_ratio: gamma, the fraction of the split tensor that bypasses the blocks (0: plain stage).
        block_out_chs: the width the family's blocks produce: a number (a residual stack of fixed
            width), or a function of their input width (``lambda c: c + n * k`` for a dense block).
        fusion: one of :data:`FUSIONS`: which of T and U the partial transition has.
        out_chs: the baseline stage's output width W, the width of its transition; ``None``: the
            baseline stage has no transition (its blocks' output is the stage output). U maps to W.
        exp_chs: width of a split conv opening a CSP stage (the darknet cfgs' two 1x1 convs, made one);
            ``None``: split the input as it is. A plain stage splits nothing and gets no split conv.
        transition_b_ratio: T's width as a fraction of the blocks' output; ``None``: ``W - bypass``,
            so that ``[x', T]`` is exactly as wide as the baseline stage (``fusion_last`` is then
            ``csp`` without U, at the baseline's widths).
        partial_transition: ``False``: no T and no U, x' joins the blocks' output by concatenation
            alone (CSPDenseNet's last stage).
        plain_transition: whether the baseline stage ends in its transition (U to ``out_chs``:
            DenseNet, PeleeNet). ``False``: the baseline stage is its blocks alone (Darknet, ResNet;
            output ``B``) and ``out_chs`` is only the width U gives the CSP twin.
        multiple: the bypass and block path widths are multiples of this (see :func:`split_channels`):
            the group count of the grouped convs that read them.
        stage: the stage's index, named in errors.

    The rules, with ``B`` = the blocks' output width::

        plain stage (bypass 0)   blocks -> U (to W, where the baseline has a transition)   out = W or B
                                 (no U with out_chs=None or plain_transition=False)
        no partial transition    [x', blocks]                                              out = bypass + B
        "csp"                    [x', T] -> U                                              out = W
        "fusion_first"           [x', blocks] -> U                                         out = W
        "fusion_last"            [x', T]                                                   out = bypass + T

    >>> plan = plan_stage(64, 0.5, lambda c: c + 6 * 32, out_chs=128)   # a DenseNet-121 stage 0
    >>> plan.bypass_chs, plan.block_out_chs, plan.transition_b_chs, plan.transition_chs, plan.out_chs
    (32, 224, 96, 128, 128)
    >>> plan_stage(64, 0.5, lambda c: c + 6 * 32, out_chs=128, fusion="fusion_first").cat_chs
    256
    >>> darknet = dict(exp_chs=128, out_chs=128, transition_b_ratio=1.0, plain_transition=False)
    >>> plan_stage(128, 0.5, 64, fusion="fusion_last", **darknet).out_chs  # CSPDarknet-53 stage 2
    128
    >>> plan_stage(128, 0.0, 128, **darknet).out_chs, plan_stage(128, 0.0, 128, **darknet).exp_chs
    (128, None)
    """
    if fusion not in _PARTIAL_TRANSITIONS:
        raise ValueError(f"fusion={fusion!r} is invalid: expected one of {', '.join(map(repr, FUSIONS))}")
    split_chs = exp_chs if exp_chs is not None and partial_ratio > 0 else None  # a plain stage splits nothing
    bypass, block_in = split_channels(in_chs if split_chs is None else split_chs, partial_ratio, multiple)
    block_out = block_out_chs if isinstance(block_out_chs, int) else block_out_chs(block_in)
    width = bypass + block_out if out_chs is None else out_chs  # W: what the baseline stage puts out
    if bypass == 0:  # the baseline's own stage: its transition, if it has one, is U
        has_t, has_u = False, out_chs is not None and plain_transition
    elif partial_transition:
        has_t, has_u = _PARTIAL_TRANSITIONS[fusion]
    else:
        has_t = has_u = False
    t_chs = None
    if has_t and transition_b_ratio is not None:
        t_chs = max(1, int(round(block_out * transition_b_ratio)))
    elif has_t:
        t_chs = width - bypass
        if t_chs < 1:
            where = "a stage" if stage is None else f"stage {stage}"
            raise ValueError(
                f"partial_ratio={partial_ratio} is too large for {where}: the bypass ({bypass} channels) is "
                f"as wide as the stage output ({width}); lower partial_ratio or set transition_b_ratio"
            )
    return StagePlan(
        in_chs=in_chs,
        exp_chs=split_chs,
        bypass_chs=bypass,
        block_in_chs=block_in,
        block_out_chs=block_out,
        transition_b_chs=t_chs,
        transition_chs=width if has_u else None,
        out_chs=width if has_u else bypass + (block_out if t_chs is None else t_chs),
    )


def transition_pool_slots(placement: str, *, last: bool) -> tuple[bool, bool]:
    """Where a family whose transition ends in a pool puts it: ``(after U, before U)`` for one stage.

    ``"after"``: the pool follows U, opening the next stage (no pool after the last stage);
    ``"before"``: between the concatenation and U, inside the stage (the last stage has none).

    >>> transition_pool_slots("after", last=False), transition_pool_slots("before", last=False)
    ((True, False), (False, True))
    >>> transition_pool_slots("before", last=True)
    (False, False)
    """
    if placement not in TRANSITION_POOLS:
        raise ValueError(f"transition_pool={placement!r} is invalid: expected one of {', '.join(TRANSITION_POOLS)}")
    if last:
        return False, False
    return placement == "after", placement == "before"


TransitionFactory = Callable[[int, int], nn.Module]
"""``make_transition(in_chs, out_chs) -> module``: a family's 1x1 transition conv (T, U, the split conv)."""


def _identity(module: nn.Module | None) -> nn.Module:
    return nn.Identity() if module is None else module


class CrossStagePartial(nn.Module):
    """A (cross stage partial) stage around an arbitrary ``blocks`` module.

    Args:
        blocks: the stack of blocks run on the block path (``nn.Sequential`` of residual / dark
            blocks, a dense block, ...). It maps ``block_chs`` channels to any width.
        bypass_chs: channels of the cross-stage part x' taken from the front of the split tensor;
            0 turns the module into a plain stage.
        down: module that opens the stage (strided conv, pooling) or ``None``.
        conv_exp: conv applied before the split or ``None`` (split the input directly).
        conv_transition_b: transition on the block path (T) or ``None``.
        conv_transition: transition after the concatenation (U) or ``None``.
        fusion_pool: pooling between the concatenation and U, or ``None``; lets U run at the
            pooled resolution (a cheaper placement of DenseNet's transition pooling).

    >>> import torch
    >>> from torch import nn
    >>> stage = CrossStagePartial(nn.Conv2d(8, 8, 3, padding=1), bypass_chs=8,
    ...                           conv_transition=nn.Conv2d(16, 32, 1))
    >>> stage(torch.randn(2, 16, 8, 8)).shape
    torch.Size([2, 32, 8, 8])
    """

    def __init__(
        self,
        blocks: nn.Module,
        *,
        bypass_chs: int = 0,
        down: nn.Module | None = None,
        conv_exp: nn.Module | None = None,
        conv_transition_b: nn.Module | None = None,
        conv_transition: nn.Module | None = None,
        fusion_pool: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.bypass_chs = bypass_chs
        self.grad_checkpointing = False
        self.down = _identity(down)
        self.conv_exp = _identity(conv_exp)
        self.blocks = blocks
        self.conv_transition_b = _identity(conv_transition_b)
        self.fusion_pool = _identity(fusion_pool)
        self.conv_transition = _identity(conv_transition)

    @classmethod
    def build(
        cls,
        plan: StagePlan,
        make_blocks: Callable[[int], nn.Module],
        make_transition: TransitionFactory,
        *,
        make_exp: TransitionFactory | None = None,
        down: nn.Module | None = None,
        fusion_pool: nn.Module | None = None,
    ) -> CrossStagePartial:
        """The stage ``plan`` describes, from the family's parts.

        ``make_blocks(plan.block_in_chs)`` builds the blocks; ``make_transition`` builds T and U
        (and the split conv, unless ``make_exp`` is given). The parts are made in the order blocks,
        split conv, T, U: the order in which they draw from the random generator.

        >>> plan = plan_stage(16, 0.5, lambda c: 2 * c, out_chs=24)
        >>> stage = CrossStagePartial.build(plan, lambda c: nn.Conv2d(c, 2 * c, 3, padding=1),
        ...                                 lambda i, o: nn.Conv2d(i, o, 1))
        >>> stage(torch.randn(1, 16, 8, 8)).shape, stage.conv_transition_b.out_channels
        (torch.Size([1, 24, 8, 8]), 16)
        """
        blocks = make_blocks(plan.block_in_chs)
        conv_exp = None
        if plan.exp_chs is not None:
            conv_exp = (make_exp or make_transition)(plan.in_chs, plan.exp_chs)
        conv_t_b = None
        if plan.transition_b_chs is not None:
            conv_t_b = make_transition(plan.block_out_chs, plan.transition_b_chs)
        conv_t = None
        if plan.transition_chs is not None:
            conv_t = make_transition(plan.cat_chs, plan.transition_chs)
        return cls(
            blocks,
            bypass_chs=plan.bypass_chs,
            down=down,
            conv_exp=conv_exp,
            conv_transition_b=conv_t_b,
            conv_transition=conv_t,
            fusion_pool=fusion_pool,
        )

    def extra_repr(self) -> str:
        return f"bypass_chs={self.bypass_chs}"

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv_exp(self.down(x))
        if self.bypass_chs > 0:
            bypass = x[:, : self.bypass_chs]
            x = self.conv_transition_b(self._run_blocks(x[:, self.bypass_chs :]))
            x = torch.cat([bypass, x], dim=1)
        else:
            x = self.conv_transition_b(self._run_blocks(x))
        return self.conv_transition(self.fusion_pool(x))

    def _run_blocks(self, x: Tensor) -> Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return self._run_blocks_checkpointed(x)
        return self.blocks(x)

    @torch.jit.unused
    def _run_blocks_checkpointed(self, x: Tensor) -> Tensor:
        # A sequential stack is checkpointed block by block so that only block inputs are kept;
        # any other stack (a dense block checkpoints its own layers) is checkpointed whole.
        if isinstance(self.blocks, nn.Sequential):
            for block in self.blocks:
                x = checkpoint_once(block, block, x)
            return x
        if getattr(self.blocks, "grad_checkpointing", None) is not None:
            return self.blocks(x)
        return checkpoint_once(self.blocks, self.blocks, x)
