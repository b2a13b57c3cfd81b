"""The stages of a dense network, shared by (CSP)DenseNet and (CSP)PeleeNet (CSPNet paper §3.1, Fig. 3).

A dense network's stage is ``dense block -> transition conv (+ 2x2 pool)``; its CSP twin sends the
first ``partial_ratio`` (gamma) of the stage input past the dense block and joins it back at the
*partial transition* picked by ``fusion``. The widths of the split, T and U and the fusion
strategies are the stage factory's (:func:`cspnet.layers.plan_stage`, which documents the width
rules; :meth:`cspnet.layers.CrossStagePartial.build`); where the transition's pool goes is
:func:`cspnet.layers.transition_pool_slots`. What this module adds is what the dense families
share: the config fields of the CSP choices (:class:`CSPStageFields`) and the loop over the
stages. A family supplies only what differs: its dense block (any :class:`~cspnet.layers.DenseBlock`),
its transition conv (DenseNet's pre-activation BN-ReLU-conv, PeleeNet's post-activation
conv-BN-ReLU), the baseline's transition width per stage, and what opens stage 0.

The dense families' choices, given to the factory:

* the baseline stage's output width ``W`` is its transition's (``None`` where it has none: the
  dense block's ``C + n * k``), and U maps to ``W``: the CSP network matches its baseline stage for
  stage;
* T fills the stage width by default (``transition_b_ratio=None``), so ``fusion_last`` is ``csp``
  without U;
* the last stage gets a partial transition only with ``last_stage_transition=True``; otherwise
  ``x'`` joins the dense output by concatenation alone (width ``C + n * k``).

With ``partial_ratio=0`` the stage is the baseline's own stage (``down -> dense block ->
transition``), so one builder makes both networks.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from cspnet.layers import TRANSITION_POOLS, CrossStagePartial, DenseBlock, plan_stage, transition_pool_slots
from cspnet.models.backbone import FeatureInfo
from cspnet.models.config import bounded, fusion_field, one_of, transition_b_ratio_field

BlockFactory = Callable[[int, int], DenseBlock]
"""``make_block(stage_index, in_chs) -> dense block``; it adds ``added_chs(stage_index)`` channels."""
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
    fusion: str = fusion_field()
    transition_b_ratio: float | None = transition_b_ratio_field(None)
    transition_pool: str = one_of("after", TRANSITION_POOLS, doc="2x2 pool after the transition or before U")
    last_stage_transition: bool = one_of(
        False, (False, True), doc="give the last CSP stage a partial transition (T and/or U)"
    )


def _adds(chs: int) -> Callable[[int], int]:
    """A dense block's output width from its input width: it adds ``chs`` channels."""
    return lambda in_chs: in_chs + chs


def build_csp_dense_stages(
    cfg: CSPStageFields,
    num_stages: int,
    in_chs: int,
    make_block: BlockFactory,
    added_chs: Callable[[int], int],
    transition_width: TransitionWidth,
    make_transition: TransitionFactory,
    make_pool: Callable[[], nn.Module],
    feature_info: FeatureInfo,
    *,
    first_down: nn.Module | None = None,
) -> tuple[list[CrossStagePartial], int]:
    """All stages of a (CSP) dense network, appending each stage's level to ``feature_info``.

    Stage ``i`` is sized by :func:`~cspnet.layers.plan_stage` from its input width, ``cfg`` and
    the baseline's width (``transition_width(i, C + added_chs(i))``). The transition's pool
    (``make_pool()``, a 2x2/2 average pool in both families) goes where ``cfg.transition_pool``
    says: opening the next stage (``"after"``) or inside the stage between the concatenation and U
    (``"before"``); the last stage never pools. ``first_down`` opens stage 0 (a stem pool or the
    rest of a stem). ``first_down`` and every pool halve the resolution. Strides are tracked from
    ``feature_info[-1]``, which must hold the stem's level.

    Returns:
        The stages and the last stage's output width.

    >>> from cspnet.layers import NormActConv
    >>> info = FeatureInfo([{"num_chs": 24, "reduction": 1, "module": "stem"}])
    >>> stages, width = build_csp_dense_stages(
    ...     CSPStageFields(partial_ratio=0.5), 3, 24, lambda i, c: DenseBlock(c, 4, 12), lambda i: 4 * 12,
    ...     lambda i, w: None if i == 2 else w // 2, NormActConv, lambda: nn.AvgPool2d(2), info)
    >>> width, info.channels(), info.reduction()
    (90, [24, 36, 42, 90], [1, 1, 2, 4])
    >>> stages[0].bypass_chs, stages[0].blocks.out_chs, stages[0].conv_transition_b.conv.out_channels
    (12, 60, 24)
    """
    stride = feature_info[-1]["reduction"]
    stages: list[CrossStagePartial] = []
    chs = in_chs
    down = first_down
    for i in range(num_stages):
        last = i == num_stages - 1
        added = added_chs(i)
        plan = plan_stage(
            chs,
            cfg.partial_ratio,
            _adds(added),
            fusion=cfg.fusion,
            out_chs=transition_width(i, chs + added),
            transition_b_ratio=cfg.transition_b_ratio,
            partial_transition=not last or cfg.last_stage_transition,
            stage=i,
        )
        pool_after, pool_before = transition_pool_slots(cfg.transition_pool, last=last)
        fusion_pool = make_pool() if pool_before else None
        stage = CrossStagePartial.build(
            plan, functools.partial(make_block, i), make_transition, down=down, fusion_pool=fusion_pool
        )
        stride *= (2 if down is not None else 1) * (2 if fusion_pool is not None else 1)
        chs = plan.out_chs
        stages.append(stage)
        feature_info.append({"num_chs": chs, "reduction": stride, "module": f"stages.{i}"})
        down = make_pool() if pool_after else None
    return stages, chs
