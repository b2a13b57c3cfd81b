"""Detectors through the model API: every registered one, every neck on several backbones, the config errors.

Inputs stay small (64-96 px) so the whole file runs in seconds; the cfg detectors' full-size costs are
in ``test_detection_costs.py`` (meta device).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import cspnet
from cspnet.detection import NECKS, Detector
from cspnet.profiling.necks import feature_pyramid_memory

DETECTORS = cspnet.list_models(task="detection")
SMALL = "cspdensenet_bc40_efm"


def outputs_shapes(model: nn.Module, x: torch.Tensor) -> list[tuple[int, ...]]:
    return [tuple(o.shape) for o in model(x)]


def test_the_registered_detectors() -> None:
    assert DETECTORS == sorted([
        "cspdarknet53_panet_spp", "cspdensenet121_efm", "cspdensenet121_fpn", "cspdensenet_bc40_efm",
        "csppeleenet_efm", "csppeleenet_fpn", "cspresnet50_panet_spp", "cspresnext50_panet_spp", "darknet53_fpn_spp",
    ])  # fmt: skip
    assert cspnet.list_models("*_spp") == [
        "cspdarknet53_panet_spp", "cspresnet50_panet_spp", "cspresnext50_panet_spp", "darknet53_fpn_spp"
    ]  # fmt: skip


@pytest.mark.parametrize("name", DETECTORS)
def test_forward_at_multiples_of_the_stride_and_not(name: str) -> None:
    """Shapes of every registered detector as registered, on the meta device (no arithmetic)."""
    with torch.device("meta"):
        model = cspnet.create_model(name, num_classes=3).eval()
        stride = model.max_stride
        channels = 3 * (5 + 3)
        assert outputs_shapes(model, torch.empty(2, 3, 2 * stride, 3 * stride)) == [
            (2, channels, 8, 12), (2, channels, 4, 6), (2, channels, 2, 3)
        ]  # fmt: skip
        # Not a multiple: zero-padded at the bottom/right to the next multiple (documented in model.py).
        assert outputs_shapes(model, torch.empty(1, 3, 2 * stride - 5, stride + 1)) == [
            (1, channels, 8, 8), (1, channels, 4, 4), (1, channels, 2, 2)
        ]  # fmt: skip


# The cfg detectors' backward runs at a quarter of their neck widths on one-block backbones (same
# module tree, a fraction of the arithmetic); the others as registered.
REDUCED = {
    "cspdarknet53_panet_spp": {"depths": (1,) * 5},
    "darknet53_fpn_spp": {"depths": (1,) * 5},
    "cspresnet50_panet_spp": {"depths": (1,) * 4},
    "cspresnext50_panet_spp": {"depths": (1,) * 4},
}


@pytest.mark.parametrize("name", DETECTORS)
def test_backward_reaches_every_parameter_and_outputs_are_finite(name: str) -> None:
    overrides: dict = {}
    if name in REDUCED:
        overrides = {"backbone_overrides": REDUCED[name], "neck_widths": (32, 64, 128)}
    model = cspnet.create_model(name, num_classes=2, **overrides).train()
    stride = model.max_stride
    outputs = model(torch.randn(2, 3, 2 * stride, 2 * stride))
    assert all(torch.isfinite(o).all() for o in outputs)
    sum(o.square().mean() for o in outputs).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


NECK_OPTIONS = [
    {},
    {"sam": True},
    {"spp": False},
    {"neck_csp": True},
    {"downsample": "maxpool", "upsample": "bilinear"},
]


@pytest.mark.parametrize("neck", NECKS)
@pytest.mark.parametrize("options", NECK_OPTIONS, ids=lambda o: ",".join(o) or "defaults")
def test_every_neck_with_every_option_trains_on_the_small_backbone(neck: str, options: dict) -> None:
    model = cspnet.create_model(SMALL, num_classes=2, neck=neck, **options).train()
    outputs = model(torch.randn(2, 3, 64, 64))
    assert [o.shape[-1] for o in outputs] == [16, 8, 4]
    sum(o.mean() for o in outputs).backward()
    assert all(p.grad is not None for p in model.parameters())
    if options.get("neck_csp"):
        assert any(isinstance(m, cspnet.layers.CrossStagePartial) for m in model.neck.modules())


@pytest.mark.parametrize("neck", NECKS)
@pytest.mark.parametrize(
    ("backbone", "overrides"),
    [
        ("csppeleenet", {}),
        ("cspresnet50_paper", {"depths": (1, 1, 1, 1)}),
        ("densenet121", {"block_config": (1, 1, 1, 1)}),
    ],
)
def test_any_backbone_with_any_neck(backbone: str, overrides: dict, neck: str) -> None:
    model = cspnet.create_model(
        "cspdensenet121_efm", num_classes=4, backbone=backbone, backbone_overrides=overrides, neck=neck,
        neck_widths=(32, 64, 128),
    ).eval()  # fmt: skip
    assert model.strides == [8, 16, 32]
    with torch.no_grad():
        assert [o.shape[1:] for o in model(torch.randn(1, 3, 64, 64))] == [(27, 8, 8), (27, 4, 4), (27, 2, 2)]


# Every backbone with every neck, through the small registered detector (whose own backbone_overrides,
# small_input=False, mean nothing to most backbones: create_model drops them). On the meta device
# (shapes, no arithmetic); the backbones the issue named run by default, the rest under `slow`.
NAMED_BACKBONES = ("csppeleenet", "cspdarknet53", "cspresnext50_paper", "peleenet")
BACKBONE_NECKS = [
    pytest.param(backbone, neck, marks=() if backbone in NAMED_BACKBONES else pytest.mark.slow, id=f"{backbone}-{neck}")
    for backbone in cspnet.list_models(task="classification")
    for neck in NECKS
]


@pytest.mark.parametrize(("backbone", "neck"), BACKBONE_NECKS)
def test_every_backbone_builds_with_every_neck(backbone: str, neck: str) -> None:
    with torch.device("meta"):
        model = cspnet.create_model(SMALL, num_classes=2, backbone=backbone, neck=neck).eval()
        stride = model.max_stride
        shapes = outputs_shapes(model, torch.empty(1, 3, 2 * stride, 2 * stride))
    assert model.config.backbone == backbone and model.strides == [stride // 4, stride // 2, stride]
    assert shapes == [(1, 21, 8, 8), (1, 21, 4, 4), (1, 21, 2, 2)]


def test_backbone_overrides_that_name_no_field_of_the_backbone_are_an_error() -> None:
    with pytest.raises(ValueError, match="backbone_overrides small_input invalid for backbone='csppeleenet'"):
        cspnet.create_model(SMALL, backbone="csppeleenet", backbone_overrides={"small_input": False})
    # Given with the new backbone, the overrides are the user's: kept and applied.
    model = cspnet.create_model(SMALL, backbone="csppeleenet", backbone_overrides={"growth_rate": 16})
    assert model.config.backbone_overrides == (("growth_rate", 16),)


# The neck's CSP stacks come from the stage factory: neck_partial_ratio and neck_fusion change the
# built stages exactly as plan_stage says (a stack sized by hand ignores them).
@pytest.mark.parametrize("neck", NECKS)
@pytest.mark.parametrize(("ratio", "fusion"), [(0.5, "csp"), (0.25, "csp"), (0.75, "fusion_first"), (0.5, "fusion_last")])
def test_neck_stacks_are_the_stages_plan_stage_plans(neck: str, ratio: float, fusion: str) -> None:
    from cspnet.layers import CrossStagePartial, plan_stage

    model = cspnet.create_model(SMALL, num_classes=2, neck=neck, spp=True, neck_csp=True, neck_partial_ratio=ratio,
                                neck_fusion=fusion).eval()  # fmt: skip
    stages = [m for m in model.neck.modules() if isinstance(m, CrossStagePartial)]
    assert len(stages) >= 4
    for stage in stages:
        in_chs = stage.conv_exp.conv.in_channels
        width = stage.conv_exp.conv.out_channels // 2
        plan = plan_stage(in_chs, ratio, lambda c: c, fusion=fusion, out_chs=width, exp_chs=2 * width,
                          transition_b_ratio=1.0, plain_transition=False)  # fmt: skip
        assert stage.bypass_chs == plan.bypass_chs
        assert stage.blocks[0][0].conv.in_channels == plan.block_in_chs
        has_t, has_u = not isinstance(stage.conv_transition_b, nn.Identity), not isinstance(stage.conv_transition, nn.Identity)
        assert (has_t, has_u) == (plan.transition_b_chs is not None, plan.transition_chs is not None)
        if has_t:
            assert stage.conv_transition_b.conv.out_channels == plan.transition_b_chs
        if has_u:
            assert (stage.conv_transition.conv.in_channels, stage.conv_transition.conv.out_channels) == (
                plan.cat_chs, plan.transition_chs
            )  # fmt: skip
    # Outputs: the neck's widths as the plans say (fusion_last: no U, bypass + T), through the heads.
    expected = [plan_stage(w, ratio, lambda c: c, fusion=fusion, out_chs=w, exp_chs=2 * w, transition_b_ratio=1.0,
                           plain_transition=False).out_chs for w in model.config.neck_widths]  # fmt: skip
    assert list(model.neck.out_chs) == expected
    with torch.no_grad():
        features = model.neck(model.backbone(torch.randn(1, 3, 64, 64)))
        assert [f.shape[1] for f in features] == expected
        assert [o.shape[1] for o in model(torch.randn(1, 3, 64, 64))] == [21, 21, 21]


def test_maxout_is_checked_on_the_widths_efm_concatenates() -> None:
    """With fusion_last the top's stack puts out 2 x 128 channels: F2 joins 128 + 256, which 3 divides."""
    with torch.device("meta"):
        model = cspnet.create_model(SMALL, neck_csp=True, neck_fusion="fusion_last", spp=True, maxout=3)
    assert model.neck.fuse2.maxout_chs == (128 + 256) // 3


def test_detect_returns_per_image_boxes_in_input_pixels() -> None:
    model = cspnet.create_model(SMALL, num_classes=5).eval()
    results = model.detect(torch.randn(3, 3, 70, 100), conf_threshold=0.3, iou_threshold=0.5, max_detections=50)
    assert len(results) == 3
    for r in results:
        assert set(r) == {"boxes", "scores", "labels"}
        n = r["scores"].shape[0]
        assert 0 < n <= 50 and r["boxes"].shape == (n, 4) and r["labels"].shape == (n,)
        assert (r["boxes"][:, 0] >= 0).all() and (r["boxes"][:, 2] <= 100).all() and (r["boxes"][:, 3] <= 70).all()
        assert (r["labels"] >= 0).all() and (r["labels"] < 5).all()
        assert torch.equal(r["scores"], r["scores"].sort(descending=True)[0])
    with pytest.raises(ValueError, match="conf_threshold"):
        model.detect(torch.randn(1, 3, 64, 64), conf_threshold=2.0)


def test_a_csp_densenet_efm_detector_for_n_classes_in_one_line() -> None:
    model = cspnet.create_model("cspdensenet121_efm", num_classes=7)
    assert isinstance(model, Detector) and model.num_classes == 7
    assert isinstance(model.neck, cspnet.detection.EFM)
    assert cspnet.create_model(SMALL).num_classes == 80  # detectors default to COCO's 80 classes


def test_scripting() -> None:
    """TorchScript compiles the whole detector (tracing is exercised by the ONNX export test)."""
    model = cspnet.create_model(SMALL, num_classes=2, sam=True).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        scripted = torch.jit.script(model)
        for a, b in zip(scripted(x), expected):
            torch.testing.assert_close(a, b)
        # Scripted, the padding follows the input size.
        assert [o.shape[-1] for o in scripted(torch.randn(1, 3, 64, 40))] == [12, 6, 3]


@pytest.mark.parametrize("neck", NECKS)
def test_channels_last(neck: str) -> None:
    model = cspnet.create_model(SMALL, num_classes=2, neck=neck).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        model = model.to(memory_format=torch.channels_last)
        got = model(x.to(memory_format=torch.channels_last))
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * float(b.abs().max()))


def test_efm_feeds_each_scale_from_levels_s_minus_1_s_and_s_plus_1() -> None:
    """Fusion node F_s reads backbone levels s-1 and s directly and s+1 through F_{s+1}: perturbing one
    backbone level changes exactly the nodes the docstring of ``EFM`` says."""
    model = cspnet.create_model(SMALL, num_classes=2).eval()
    neck = model.neck
    with torch.no_grad():
        features = model.backbone(torch.randn(1, 3, 64, 64))
        assert [f.shape[-1] for f in features] == [32, 16, 8, 4]  # C-1, C0, C1, C2
        base = neck.fused(features)
        changed = {}
        for level in range(4):
            bumped = [f + (1.0 if i == level else 0.0) for i, f in enumerate(features)]
            changed[level] = [not torch.allclose(a, b) for a, b in zip(neck.fused(bumped), base)]
    # Rows: backbone level C-1, C0, C1, C2; columns: F0, F1, F2.
    assert changed == {
        0: [True, False, False],  # C-1 reaches only F0 (its s-1 input)
        1: [True, True, False],  # C0: F0 directly, F1 as its s-1 input
        2: [True, True, True],  # C1: F1 and F2 (s-1 of the top), F0 through F1
        3: [True, True, True],  # C2: F2, then F1 and F0 top-down (s+1)
    }


def test_maxout_shrinks_what_efm_concatenates() -> None:
    with torch.device("meta"):
        with_maxout = cspnet.create_model(SMALL, num_classes=2)
        without = cspnet.create_model(SMALL, num_classes=2, maxout=0)
    # 3 x 32 concatenated channels at scale 0: Maxout 4 -> 24 into the stack, 96 without it.
    assert with_maxout.neck.fuse0.stack[0].conv.in_channels == 24
    assert without.neck.fuse0.stack[0].conv.in_channels == 96
    # At 128 px the fusion nodes concatenate 3 x 32 channels at 32x32, 3 x 64 at 16x16 and 2 x 128 at
    # 8x8 (float32). With Maxout none of that is built: each node allocates only its output, a quarter.
    fusion_concat = 4 * (96 * 32 * 32 + 192 * 16 * 16 + 256 * 8 * 8)
    compressed = feature_pyramid_memory(SMALL, 128)
    full = feature_pyramid_memory(SMALL, 128, maxout=0)
    assert full.concat_bytes - compressed.concat_bytes == fusion_concat
    assert full.total_bytes - compressed.total_bytes == fusion_concat - fusion_concat // 4
    assert compressed.peak_bytes < full.peak_bytes


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"neck": "bifpn"}, "neck='bifpn' is invalid: expected one of"),
        ({"backbone": "resnet9000"}, "unknown model 'resnet9000'"),
        ({"backbone": "csppeleenet_efm"}, "it is a detector"),
        ({"neck": "fpn", "maxout": 4}, "maxout=4 is only used by neck='efm'"),
        ({"maxout": 5}, "maxout=5 does not divide"),
        ({"stack_convs": 4}, "stack_convs=4 is invalid"),
        ({"neck_widths": (32, 64)}, "expected 3 widths"),
        ({"anchors": ((10, 13), (16, 30))}, "anchors=.* is invalid"),
        ({"anchors": ((10, -1),) * 3}, "anchors=.* is invalid"),
        ({"backbone_overrides": {"small_input": True}}, "neck='efm' needs a backbone level finer than stride 1"),
        ({"backbone": "cspdensenet_bc40", "backbone_overrides": {}}, "needs a backbone level finer"),
        ({"input_padding": "crop"}, "input_padding='crop' is invalid"),
        ({"neck_fusion": "fusion_last"}, "neck_fusion='fusion_last' is only used with neck_csp=True"),
        ({"neck_partial_ratio": 0.25}, "neck_partial_ratio=0.25 is only used with neck_csp=True"),
        ({"neck_csp": True, "neck_partial_ratio": 1.0}, "neck_partial_ratio=1.0 is out of range"),
        ({"neck_csp": True, "neck_fusion": "late"}, "neck_fusion='late' is invalid"),
        ({"neck_csp": True, "spp": True, "maxout": 3}, r"maxout=3 does not divide the 256 channels neck='efm' concatenates at scale 2 \(128 \+ 128"),
    ],
)
def test_invalid_configs_name_the_problem(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cspnet.create_model(SMALL, **overrides)


def test_other_invalid_uses_name_the_problem() -> None:
    with pytest.raises(ValueError, match="features_only=True needs a backbone"):
        cspnet.create_model(SMALL, features_only=True)
    with pytest.raises(ValueError, match="at least one class"):
        cspnet.create_model(SMALL, num_classes=0)
    with pytest.raises(ValueError, match="cannot feed a 3-scale neck"):
        # Two stages at 32x32-style strides 1, 1, 2: two distinct strides.
        cspnet.create_model(SMALL, neck="fpn", backbone_overrides={"block_config": (6, 6), "small_input": True})
    strict = cspnet.create_model(SMALL, num_classes=2, input_padding="error").eval()
    assert len(strict(torch.randn(1, 3, 64, 64))) == 3
    with pytest.raises(ValueError, match="multiples of the detector's stride 16"):
        strict(torch.randn(1, 3, 60, 64))


def test_classification_commands_hand_detectors_to_the_detection_path(tmp_path, capsys: pytest.CaptureFixture) -> None:
    """`cspnet export` of a detector writes what `cspnet detect export` writes (tests/test_detect_deploy.py
    covers `cspnet benchmark`); what only classifiers have is a one-line error."""
    from cspnet.cli.main import main
    from cspnet.metadata import read_onnx_info

    out = tmp_path / "d.onnx"
    assert main(["export", SMALL, "--format", "onnx", "--img-size", "64", "--output", str(out)]) == 0
    assert read_onnx_info(out).task == "detection"
    assert main(["export", SMALL, "--format", "torchscript", "--output", str(tmp_path / "d.pt")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "a detector exports to ONNX" in lines[0]


def test_training_config_refuses_detectors() -> None:
    from cspnet.training.config import TrainConfig

    with pytest.raises(ValueError, match=f"--model {SMALL} is not a classification model: `cspnet train` trains"):
        TrainConfig(model=SMALL).validate()


@pytest.mark.parametrize(
    ("neck", "reach"),
    [
        ("fpn", {0: [True, False, False], 1: [True, True, False], 2: [True, True, True]}),  # top-down only
        ("panet", {0: [True, True, True], 1: [True, True, True], 2: [True, True, True]}),  # + bottom-up
        ("gfm", {0: [True, True, True], 1: [True, True, True], 2: [True, True, True]}),  # merged, redistributed
    ],
)
def test_which_backbone_levels_reach_which_outputs(neck: str, reach: dict) -> None:
    """FPN fuses each scale with the coarser ones only; PANet adds the bottom-up path; GFM's global
    map carries every level to every output (rows: backbone level C0..C2, columns: outputs P0..P2)."""
    model = cspnet.create_model(SMALL, num_classes=2, neck=neck).eval()
    with torch.no_grad():
        features = model.backbone(torch.randn(1, 3, 64, 64))
        base = model.neck(features)
        for level, expected in reach.items():
            bumped = [f + (1.0 if i == level else 0.0) for i, f in enumerate(features)]
            assert [not torch.allclose(a, b) for a, b in zip(model.neck(bumped), base)] == expected, level


def test_concat_maxout_traces_to_the_same_result() -> None:
    """The in-place path writes through slice views, which tracing (and so ONNX export) does not record."""
    from cspnet.models.detectors.blocks import Maxout, concat_maxout

    class Fuse(torch.nn.Module):
        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return concat_maxout([a, b], 4)

    a, b = torch.randn(2, 8, 3, 3), torch.randn(2, 4, 3, 3)
    with torch.no_grad():
        traced = torch.jit.trace(Fuse(), (a, b))
        a2, b2 = torch.randn(2, 8, 3, 3), torch.randn(2, 4, 3, 3)
        assert torch.equal(traced(a2, b2), Maxout(4)(torch.cat([a2, b2], 1)))
