"""The cross stage partial stage: one module that wraps any stack of blocks.

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
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from cspnet.layers.checkpoint import checkpoint_once

Fusion = Literal["csp", "fusion_first", "fusion_last"]
FUSIONS: tuple[str, ...] = ("csp", "fusion_first", "fusion_last")


def split_channels(chs: int, partial_ratio: float) -> tuple[int, int]:
    """Split ``chs`` into (bypass, block path) channels; ``partial_ratio`` is the paper's gamma.

    gamma is the fraction that *bypasses* the blocks: the paper's ablation (larger gamma saves more
    computation) only makes sense that way.

    >>> split_channels(64, 0.5)
    (32, 32)
    >>> split_channels(64, 0.25)
    (16, 48)
    """
    bypass = int(round(chs * partial_ratio))
    if partial_ratio > 0 and bypass == 0:
        bypass = 1
    if bypass >= chs:
        raise ValueError(f"partial_ratio={partial_ratio} leaves no channels for the blocks of a {chs}-channel stage")
    return bypass, chs - bypass


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
