"""The CSP stage of a dense network, shared by CSPDenseNet and CSPPeleeNet (paper §1.3, Fig. 3).

A dense network's stage is ``dense block -> transition conv (+ 2x2 pool)``; its CSP twin sends the
first ``partial_ratio`` (gamma) of the stage input past the dense block and joins it back at the
*partial transition* picked by ``fusion``. Everything about that construction lives here: the
split, the widths of T (``conv_transition_b``) and U (``conv_transition``), the three fusion
strategies, where the transition's pool goes and whether the last stage gets a partial
transition. A family supplies only what differs: its dense block (any :class:`~cspnet.layers.DenseBlock`),
its transition conv (DenseNet's pre-activation BN-ReLU-conv, PeleeNet's post-activation
conv-BN-ReLU), the baseline's transition width per stage, and what opens stage 0.

Width rules (``C`` = stage input, ``n * k`` = what the dense block adds, ``W`` = the baseline
stage's output width: its transition's, or ``C + n * k`` where it has no transition):

* bypass ``x'`` = the first ``round(gamma * C)`` channels, the dense block runs on the other ``C''``;
* T (``csp``, ``fusion_last``) = ``W - bypass`` by default (``transition_b_ratio=None``), so the
  concatenation ``[x', T]`` is exactly as wide as the baseline stage and ``fusion_last`` is ``csp``
  without U; or ``round(transition_b_ratio * (C'' + n * k))``;
* U (``csp``, ``fusion_first``) = ``W``: the CSP network matches its baseline stage for stage;
* ``transition_pool="after"`` pools after U (it opens the next stage, as the baseline's pool
  does); ``"before"`` pools between the concatenation and U so U runs on a quarter of the pixels;
* the last stage: if ``last_stage_transition`` is false, ``x'`` joins the dense output by
  concatenation alone (width ``C + n * k``), whether or not the baseline's last stage has a
  transition; if true, it gets the partial transition of ``fusion`` with U to ``W``.

With ``partial_ratio=0`` the stage is the baseline's own stage (``down -> dense block ->
transition``), so one builder makes both networks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from cspnet.layers import FUSIONS, CrossStagePartial, DenseBlock, split_channels
from cspnet.models.backbone import FeatureInfo
from cspnet.models.config import bounded, one_of

BlockFactory = Callable[[int, int], DenseBlock]
"""``make_block(stage_index, in_chs) -> dense block`` (its ``out_chs`` says how wide its output is)."""
TransitionFactory = Callable[[int, int], nn.Module]
"""``make_transition(in_chs, out_chs) -> 1x1 transition conv`` (used for T, U and the baseline's)."""
TransitionWidth = Callable[[int, int], "int | None"]
"""``transition_width(stage_index, dense_width) -> width``: the baseline's transition width after a
dense block ending ``dense_width`` channels wide, or ``None`` where the baseline has no transition."""


@dataclass(frozen=True)
class CSPStageFields:
    """Config mixin: the CSP fields of a dense family (``DenseNetConfig``, ``PeleeNetConfig``).

    Mix in before :class:`~cspnet.models.config.ModelConfig` (``class XConfig(CSPStageFields,
    ModelConfig)``) so ``ModelConfig.__post_init__`` validates these fields too.
    """

    partial_ratio: float = bounded(
        0.0, 0.0, 1.0, high_open=True, doc="gamma: fraction of each stage's input that bypasses the dense block"
    )
    fusion: str = one_of("csp", FUSIONS, doc="partial transition: csp (T, concat, U), fusion_first, fusion_last")
    transition_b_ratio: float | None = bounded(
        None, 0.0, 1.0, low_open=True, optional=True, doc="width of T / dense-path width (None: fill the stage width)"
    )
    transition_pool: str = one_of("after", ("after", "before"), doc="2x2 pool after the transition or before U")
    last_stage_transition: bool = one_of(
        False, (False, True), doc="give the last CSP stage a partial transition (T and/or U)"
    )


def build_csp_dense_stage(
    cfg: CSPStageFields,
    index: int,
    in_chs: int,
    make_block: BlockFactory,
    transition_width: TransitionWidth,
    make_transition: TransitionFactory,
    *,
    last: bool = False,
    down: nn.Module | None = None,
    fusion_pool: nn.Module | None = None,
) -> tuple[CrossStagePartial, int]:
    """One (CSP) dense stage and its output width; see the module docstring for the width rules.

    Args:
        cfg: the CSP fields (``partial_ratio`` 0 builds the baseline stage).
        index: the stage's index (passed to the factories; names the stage in errors).
        in_chs: the stage's input width, after ``down``.
        make_block / transition_width / make_transition: the family's parts (see their aliases).
        last: this is the network's last stage (``cfg.last_stage_transition`` applies).
        down: what opens the stage (the previous transition's pool, a stem pool) or ``None``.
        fusion_pool: the pool to run between the concatenation and U (``transition_pool="before"``)
            or ``None``. It closes a plain stage after T, before the transition conv.

    >>> from cspnet.layers import NormActConv
    >>> cfg = CSPStageFields(partial_ratio=0.5)
    >>> stage, out = build_csp_dense_stage(
    ...     cfg, 0, 64, lambda i, c: DenseBlock(c, 6, 32), lambda i, w: w // 2, NormActConv)
    >>> stage.bypass_chs, stage.blocks.out_chs, stage.conv_transition_b.conv.out_channels, out
    (32, 224, 96, 128)
    """
    bypass, dense_in = split_channels(in_chs, cfg.partial_ratio)
    blocks = make_block(index, dense_in)
    dense_width = in_chs + blocks.out_chs - dense_in  # the baseline's width at the end of its dense block
    baseline_width = transition_width(index, dense_width)
    out = dense_width if baseline_width is None else baseline_width

    conv_t_b = conv_t = None
    if bypass == 0:  # the baseline stage
        if baseline_width is not None:
            conv_t = make_transition(blocks.out_chs, out)
    elif last and not cfg.last_stage_transition:
        out = bypass + blocks.out_chs  # the bypass joins the dense output by concatenation alone
    else:
        if cfg.fusion in ("csp", "fusion_last"):
            if cfg.transition_b_ratio is None:
                t_chs = out - bypass
                if t_chs < 1:
                    raise ValueError(
                        f"partial_ratio={cfg.partial_ratio} is too large for stage {index}: the bypass "
                        f"({bypass} channels) is as wide as the stage output ({out}); lower partial_ratio "
                        "or set transition_b_ratio"
                    )
            else:
                t_chs = max(1, int(round(blocks.out_chs * cfg.transition_b_ratio)))
            conv_t_b = make_transition(blocks.out_chs, t_chs)
            cat_chs = bypass + t_chs
        else:
            cat_chs = bypass + blocks.out_chs
        if cfg.fusion in ("csp", "fusion_first"):
            conv_t = make_transition(cat_chs, out)
        else:
            out = cat_chs
    stage = CrossStagePartial(
        blocks,
        bypass_chs=bypass,
        down=down,
        conv_transition_b=conv_t_b,
        conv_transition=conv_t,
        fusion_pool=fusion_pool,
    )
    return stage, out


def build_csp_dense_stages(
    cfg: CSPStageFields,
    num_stages: int,
    in_chs: int,
    make_block: BlockFactory,
    transition_width: TransitionWidth,
    make_transition: TransitionFactory,
    make_pool: Callable[[], nn.Module],
    feature_info: FeatureInfo,
    *,
    first_down: nn.Module | None = None,
) -> tuple[list[CrossStagePartial], int]:
    """All stages of a (CSP) dense network, appending each stage's level to ``feature_info``.

    The transition's pool (``make_pool()``, a 2x2/2 average pool in both families) goes where
    ``cfg.transition_pool`` says: opening the next stage (``"after"``) or inside the stage between
    the concatenation and U (``"before"``); the last stage never pools. ``first_down`` opens stage
    0 (a stem pool or the rest of a stem). ``first_down`` and every pool halve the resolution. Strides are tracked from ``feature_info[-1]``, which must
    hold the stem's level.

    Returns:
        The stages and the last stage's output width.

    >>> from cspnet.layers import NormActConv
    >>> info = FeatureInfo([{"num_chs": 24, "reduction": 1, "module": "stem"}])
    >>> stages, width = build_csp_dense_stages(
    ...     CSPStageFields(partial_ratio=0.5), 3, 24, lambda i, c: DenseBlock(c, 4, 12),
    ...     lambda i, w: None if i == 2 else w // 2, NormActConv, lambda: nn.AvgPool2d(2), info)
    >>> width, info.channels(), info.reduction()
    (90, [24, 36, 42, 90], [1, 1, 2, 4])
    """
    pool_after = cfg.transition_pool == "after"
    stride = feature_info[-1]["reduction"]
    stages: list[CrossStagePartial] = []
    chs = in_chs
    for i in range(num_stages):
        last = i == num_stages - 1
        if i == 0:
            down = first_down
        else:
            down = make_pool() if pool_after else None
        fusion_pool = None if (pool_after or last) else make_pool()
        stage, chs = build_csp_dense_stage(
            cfg, i, chs, make_block, transition_width, make_transition, last=last, down=down, fusion_pool=fusion_pool
        )
        stride *= (2 if down is not None else 1) * (2 if fusion_pool is not None else 1)
        stages.append(stage)
        feature_info.append({"num_chs": chs, "reduction": stride, "module": f"stages.{i}"})
    return stages, chs

