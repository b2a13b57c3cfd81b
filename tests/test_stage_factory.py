"""The stage factory (cspnet.layers.plan_stage / CrossStagePartial.build): one place for the CSP rules.

Every family sizes its stages through it, so every family takes ``partial_ratio`` and ``fusion``;
the widths it plans are the widths of the modules it builds; the costs a fusion strategy saves are
exactly the convolutions it removes.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from torch import nn

import cspnet
from cspnet.layers import FUSIONS, CrossStagePartial, StagePlan, plan_stage, transition_pool_slots
from cspnet.models.stagenet import StageNetConfig

SRC = Path(cspnet.__file__).parent


def _conv_bn_params(in_chs: int, out_chs: int, kernel: int = 1) -> int:
    """A bias-free conv and its batch norm (weight and bias)."""
    return in_chs * out_chs * kernel * kernel + 2 * out_chs


# ---------------------------------------------------------------------------------------------
# plan_stage: the width rules, on random stages


def _random_stage(rng: random.Random) -> dict:
    in_chs = rng.randint(2, 256)
    dense = rng.random() < 0.5
    growth = rng.randint(1, 64)
    kwargs = {
        "in_chs": in_chs,
        "partial_ratio": rng.choice([0.0, 0.25, 0.5, 2 / 3, 0.75, rng.uniform(0.05, 0.9)]),
        "block_out_chs": (lambda c: c + growth) if dense else rng.randint(1, 256),
        "fusion": rng.choice(FUSIONS),
        "out_chs": rng.choice([None, rng.randint(1, 512)]),
        "exp_chs": None if dense else rng.choice([None, rng.randint(2, 512)]),
        "transition_b_ratio": rng.choice([None, 1.0, rng.uniform(0.05, 1.0)]),
        "partial_transition": rng.random() < 0.8,
        "plain_transition": dense,
    }
    return kwargs


def _plans(n: int, seed: int = 0) -> list[tuple[dict, StagePlan]]:
    rng = random.Random(seed)
    out: list[tuple[dict, StagePlan]] = []
    while len(out) < n:
        kwargs = _random_stage(rng)
        try:
            out.append((kwargs, plan_stage(**kwargs)))
        except ValueError as exc:  # a bypass as wide as the stage, or no channels left for the blocks
            assert "partial_ratio=" in str(exc)
    return out


@pytest.mark.parametrize("index", range(4))
def test_planned_widths_follow_the_rules(index: int) -> None:
    for kwargs, plan in _plans(250, seed=index):
        split = plan.exp_chs if plan.exp_chs is not None else plan.in_chs
        assert plan.bypass_chs + plan.block_in_chs == split
        has_t, has_u = plan.transition_b_chs is not None, plan.transition_chs is not None
        assert plan.cat_chs == plan.bypass_chs + (plan.transition_b_chs if has_t else plan.block_out_chs)
        assert plan.out_chs == (plan.transition_chs if has_u else plan.cat_chs)
        if plan.bypass_chs == 0:  # the baseline's stage: no split conv, no T, U only as its transition
            assert plan.exp_chs is None and not has_t
            assert has_u == (kwargs["out_chs"] is not None and kwargs["plain_transition"])
            continue
        if not kwargs["partial_transition"]:
            assert (has_t, has_u) == (False, False)
            continue
        assert has_t == (kwargs["fusion"] != "fusion_first")
        assert has_u == (kwargs["fusion"] != "fusion_last")
        width = kwargs["out_chs"] if kwargs["out_chs"] is not None else plan.bypass_chs + plan.block_out_chs
        if has_u:
            assert plan.transition_chs == width  # U restores the baseline stage's width
        if has_t and kwargs["transition_b_ratio"] is None:
            assert plan.cat_chs == width  # T fills the stage width
        elif has_t:
            assert plan.transition_b_chs == max(1, round(plan.block_out_chs * kwargs["transition_b_ratio"]))


def test_built_stage_has_the_planned_widths() -> None:
    for kwargs, plan in _plans(60, seed=7):

        def make_blocks(chs: int, plan: StagePlan = plan) -> nn.Module:
            return nn.Conv2d(chs, plan.block_out_chs, 3, padding=1)

        stage = CrossStagePartial.build(plan, make_blocks, lambda i, o: nn.Conv2d(i, o, 1))
        assert stage.bypass_chs == plan.bypass_chs
        assert isinstance(stage.conv_exp, nn.Identity) == (plan.exp_chs is None)
        assert isinstance(stage.conv_transition_b, nn.Identity) == (plan.transition_b_chs is None)
        assert isinstance(stage.conv_transition, nn.Identity) == (plan.transition_chs is None)
        with torch.device("meta"):
            y = stage.to("meta")(torch.empty(1, plan.in_chs, 4, 4, device="meta"))
        assert y.shape[1] == plan.out_chs, kwargs


def test_fusion_and_pool_placement_are_checked() -> None:
    with pytest.raises(ValueError, match="fusion='late' is invalid: expected one of 'csp', 'fusion_first', 'fusion_last'"):
        plan_stage(64, 0.5, 64, fusion="late")
    with pytest.raises(ValueError, match="transition_pool='middle' is invalid"):
        transition_pool_slots("middle", last=False)
    with pytest.raises(ValueError, match="partial_ratio=0.5 is too large for stage 3: the bypass"):
        plan_stage(64, 0.5, 64, out_chs=32, stage=3)


# ---------------------------------------------------------------------------------------------
# Every family takes partial_ratio and fusion


# Every registered model with one fusion (taken in turn), and one model of each family with all three.
FAMILY_MODELS = ("cspdarknet53", "cspresnext50_paper", "cspdensenet_bc40", "csppeleenet")
MODEL_FUSIONS = sorted(
    {(name, FUSIONS[i % len(FUSIONS)]) for i, name in enumerate(cspnet.list_models(task="classification"))}
    | {(name, fusion) for name in FAMILY_MODELS for fusion in FUSIONS}
)


@pytest.mark.parametrize(("name", "fusion"), MODEL_FUSIONS)
def test_every_model_takes_fusion_and_builds_the_planned_stages(name: str, fusion: str) -> None:
    overrides: dict = {"fusion": fusion}
    cfg = cspnet.get_model_entry(name).config
    ratios = cfg.partial_ratio if isinstance(cfg.partial_ratio, tuple) else (cfg.partial_ratio,)
    if not any(ratios):  # a baseline: give it CSP stages
        overrides["partial_ratio"] = 0.5
        if isinstance(cfg, StageNetConfig):  # a strided first block needs a plain stage; the split
            overrides |= {"down": "conv", "shortcut": "darknet"}  # path is narrower than the blocks
    with torch.device("meta"):
        model = cspnet.create_model(name, features_only=True, **overrides)
    last_has_transition = getattr(model.config, "last_stage_transition", True)
    for i, stage in enumerate(model.stages):
        assert stage.bypass_chs > 0
        if i == len(model.stages) - 1 and not last_has_transition:
            continue  # a dense network's last stage: concatenation alone
        assert isinstance(stage.conv_transition_b, nn.Identity) == (fusion == "fusion_first"), stage
        assert isinstance(stage.conv_transition, nn.Identity) == (fusion == "fusion_last"), stage
    side = 16 if cspnet.get_model_entry(name).input_size[-1] <= 32 else 64
    # Eval mode: an ELASTIC block's half-resolution branch sees 1x1 maps at 64 px, which training-mode
    # batch norm refuses for a batch of one.
    maps = model.eval()(torch.empty(1, 3, side, side, device="meta"))
    assert [m.shape[1] for m in maps] == model.feature_info.channels()


@pytest.mark.parametrize("name", ["cspdarknet53", "cspresnet50", "cspresnext50_paper", "cspdensenet_bc40", "csppeleenet"])
def test_partial_ratio_override_changes_every_csp_split(name: str) -> None:
    with torch.device("meta"):
        model = cspnet.create_model(name, partial_ratio=0.25)
    groups = getattr(model.config, "groups", 1)  # grouped convs read both parts: multiples of the groups
    for stage in model.stages:
        split = stage.conv_exp.conv.out_channels if not isinstance(stage.conv_exp, nn.Identity) else None
        if split is not None:
            assert stage.bypass_chs == groups * round(split * 0.25 / groups)


# ---------------------------------------------------------------------------------------------
# CSPDarknet-53's fusion strategies, costed by hand


DARKNET_STAGES = [  # (block width, out, output side at 256)
    (64, 64, 128),
    (64, 128, 64),
    (128, 256, 32),
    (256, 512, 16),
    (512, 1024, 8),
]


def test_cspdarknet53_fusion_first_drops_exactly_the_t_convs() -> None:
    csp = cspnet.profile("cspdarknet53", 256)
    first = cspnet.profile("cspdarknet53", 256, fusion="fusion_first")
    t_params = sum(_conv_bn_params(b, b) for b, _, _ in DARKNET_STAGES)
    t_macs = sum(b * b * side * side for b, _, side in DARKNET_STAGES)
    assert (t_params, t_macs) == (354_304, 134_217_728)
    assert csp.params - first.params == t_params
    assert csp.macs - first.macs == t_macs
    assert (first.params, first.macs) == (27_287_880, 6_399_434_752)


def test_cspdarknet53_fusion_last_drops_the_u_convs_and_widens_stage_0() -> None:
    csp = cspnet.profile("cspdarknet53", 256)
    last = cspnet.profile("cspdarknet53", 256, fusion="fusion_last")
    # U maps [bypass, T] (bypass + block width) to out; without it stage 0 puts out 64 + 64 = 128
    # channels instead of 64, which the 3x3/2 conv opening stage 1 (to 128, at 64x64) then reads.
    u_params = sum(_conv_bn_params(2 * b if i else 128, out) for i, (b, out, _) in enumerate(DARKNET_STAGES))
    u_macs = sum((2 * b if i else 128) * out * side * side for i, (b, out, side) in enumerate(DARKNET_STAGES))
    wider_down = (128 - 64) * 128 * 3 * 3
    assert (u_params, u_macs, wider_down) == (1_404_800, 402_653_184, 73_728)
    assert csp.params - last.params == u_params - wider_down
    assert csp.macs - last.macs == u_macs - wider_down * 64 * 64
    assert (last.params, last.macs) == (26_311_112, 6_432_989_184)
    model = cspnet.create_model("cspdarknet53", fusion="fusion_last", features_only=True)
    assert model.feature_info.channels() == [32, 128, 128, 256, 512, 1024]


def test_stagenet_validation_asks_the_factory() -> None:
    # T filling the stage width leaves nothing for stage 0 of CSPDarknet-53 (bypass 64 = out 64).
    with pytest.raises(ValueError, match="partial_ratio=0.5 is too large for stage 0"):
        cspnet.create_model("cspdarknet53", fusion="fusion_last", transition_b_ratio=None)
    with pytest.raises(ValueError, match="fusion='late' is invalid"):
        cspnet.create_model("cspresnet50", fusion="late")
    cfg = StageNetConfig(depths=(1, 1), out_chs=(32, 64), strides=(1, 2), fusion="fusion_last", transition_b_ratio=0.5)
    plans = cfg.stage_plans()
    assert [(p.transition_b_chs, p.transition_chs, p.out_chs) for p in plans] == [(16, None, 48), (32, None, 96)]
    # the identity check follows the planned widths: stage 1's first block reads 48 + down conv = 48 channels
    assert plans[1].in_chs == 48


def test_the_adding_a_family_guide_runs() -> None:
    import doctest

    guide = SRC.parents[1] / "docs" / "adding-a-family.md"
    before = cspnet.list_models()
    result = doctest.testfile(str(guide), module_relative=False, raise_on_error=False, verbose=False)
    assert (result.failed, result.attempted > 10) == (0, True)
    assert cspnet.list_models() == before  # the guide registers nothing
