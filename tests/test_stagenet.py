"""ResNe(X)t- / Darknet-style CSP families: exact sizes and costs, darknet semantics, config checks.

The generic model API (forward, features, checkpointing, scripting, tracing) is covered for every
registered model in test_models.py; this file checks what is specific to these families against the
spec (cspnet-paper.md sections 2.1-2.5, 3.1, 7 and peer-layouts.md).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import cspnet
from cspnet.layers.residual import BottleneckBlock, DarkBlock, darknet_shortcut
from cspnet.models.backbone import count_params
from cspnet.models.stagenet import StageNetConfig

# name: (PyTorch parameters, conv weights incl. the classifier's, 2 x conv+classifier MACs at 256)
COUNTS = {
    "cspresnet50": (21_616_168, 21_574_848, 9_034_481_664),
    "cspresnext50": (20_569_896, 20_511_424, 8_029_896_704),
    "cspdarknet53": (27_642_184, 27_605_856, 13_067_304_960),
    "darknet53": (41_609_928, 41_573_216, 18_570_231_808),
    "cspresnet50_paper": (21_607_848, 21_566_656, 8_967_372_800),
    "cspresnext50_paper": (20_557_480, 20_499_136, 7_929_233_408),
    "cspdarknet53_paper": (27_642_184, 27_605_856, 13_067_304_960),
    "darknet53_paper": (41_609_928, 41_573_216, 18_570_231_808),
    "resnet50_paper": (22_780_456, 22_734_016, 9_741_172_736),
    "resnext50_paper": (22_252_328, 22_190_784, 10_110_271_488),
}


def conv_weights(model: nn.Module) -> int:
    """The paper's #Parameter: conv kernels, the 1x1 classifier conv's kernel included (no BN, no biases)."""
    kernels = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Conv2d))
    return kernels + model.head.fc.weight.numel()


def darknet_bflops_units(model: nn.Module, side: int = 256) -> int:
    """2 x multiply-accumulates of every conv and the classifier for one ``side`` x ``side`` image."""
    model = model.to("meta").eval()  # shapes only: no arithmetic is run
    with FlopCounterMode(display=False) as counter:
        model(torch.empty(1, 3, side, side, device="meta"))
    counts = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    assert set(counts) <= {"aten.convolution", "aten.addmm"}, counts
    return counter.get_total_flops()


def test_every_family_model_is_registered() -> None:
    assert set(COUNTS) <= set(cspnet.list_models())


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_exact_sizes_and_costs(name: str) -> None:
    params, weights, flops = COUNTS[name]
    model = cspnet.create_model(name)
    assert count_params(model) == params
    assert conv_weights(model) == weights
    assert darknet_bflops_units(model) == flops


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_sizes_and_costs_match_the_published_figures(name: str) -> None:
    params, weights, flops = COUNTS[name]
    for fig in cspnet.get_model_entry(name).published:
        if fig["source"] == "timm":
            assert fig["params"] == params  # timm's exact count
        else:  # the README's rounding: millions to 2 decimals, BFLOPs to 2 decimals
            assert fig["input"] == 256
            assert round(weights / 1e6, 2) == pytest.approx(fig["conv_weight_params"] / 1e6)
            assert round(flops / 1e9, 2) == pytest.approx(fig["bflops"])


def test_spec_calibration_points_to_three_decimals() -> None:
    # cspnet-paper.md section 7: recomputed from the cfgs, exact to the printed precision.
    assert round(COUNTS["cspdarknet53_paper"][2] / 1e9, 3) == 13.067
    assert round(COUNTS["cspresnext50_paper"][2] / 1e9, 3) == 7.929
    assert round(COUNTS["cspdarknet53_paper"][1] / 1e6, 3) == 27.606
    assert round(COUNTS["cspdarknet53_paper"][0] / 1e6, 3) == 27.642
    assert round(COUNTS["cspresnext50_paper"][1] / 1e6, 3) == 20.499
    assert round(COUNTS["cspresnext50_paper"][0] / 1e6, 3) == 20.557
    assert round(COUNTS["cspresnet50_paper"][0] / 1e6, 3) == 21.608


# Section 7 "Output feature maps at 256 input" (channels, side), after the stem level.
SPEC_MAPS = {
    "cspdarknet53": [(64, 128), (128, 64), (256, 32), (512, 16), (1024, 8)],
    "cspresnet50": [(128, 64), (256, 32), (512, 16), (1024, 8)],
    "cspresnext50": [(256, 64), (512, 32), (1024, 16), (2048, 8)],
}
STEMS = {"cspdarknet53": (32, 256), "cspresnet50": (64, 128), "cspresnext50": (64, 128)}


@pytest.mark.parametrize("layout", ["", "_paper"])
@pytest.mark.parametrize("base", sorted(SPEC_MAPS))
def test_feature_maps_at_256(base: str, layout: str) -> None:
    expected = [STEMS[base], *SPEC_MAPS[base]]
    model = cspnet.create_model(base + layout, features_only=True).to("meta")
    maps = model(torch.empty(1, 3, 256, 256, device="meta"))
    assert [(m.shape[1], m.shape[-1]) for m in maps] == expected
    assert model.feature_info.channels() == [c for c, _ in expected]
    assert model.feature_info.reduction() == [256 // s for _, s in expected]


def test_darknet_shortcut_adds_only_the_common_channels_subsampled() -> None:
    out = torch.zeros(1, 6, 2, 2)
    x = torch.arange(4 * 4 * 4, dtype=torch.float32).reshape(1, 4, 4, 4)
    y = darknet_shortcut(out, x, chs=4, stride=2)
    torch.testing.assert_close(y[:, :4], x[:, :, ::2, ::2])
    assert y[:, 4:].abs().sum() == 0


def _silence_branch(block: nn.Module) -> None:
    """Make the residual branch output exactly zero (last BN: scale 0, shift 0)."""
    last = block.conv3 if isinstance(block, BottleneckBlock) else block.conv2
    nn.init.zeros_(last.bn.weight)
    nn.init.zeros_(last.bn.bias)


def test_partial_shortcut_of_cspresnet_stage1_block1() -> None:
    """csresnet50.cfg stage 1 block 1: 64 block-path channels join a 128-channel output."""
    model = cspnet.create_model("cspresnet50_paper").eval()
    stage = model.stages[0]
    assert stage.bypass_chs == 128 and stage.conv_exp.conv.out_channels == 192
    block = stage.blocks[0]
    assert block.partial_shortcut and block.conv1.conv.in_channels == 64 and block.conv3.conv.out_channels == 128
    _silence_branch(block)
    x = torch.randn(1, 64, 8, 8)
    with torch.no_grad():
        y = block(x)
    torch.testing.assert_close(y[:, :64], nn.functional.leaky_relu(x, 0.1))  # post-add leaky
    assert y[:, 64:].abs().sum() == 0
    # The later blocks keep their shape: a plain identity add.
    assert not stage.blocks[1].partial_shortcut


def test_strided_parameter_free_shortcut_of_the_darknet_resnet_baseline() -> None:
    model = cspnet.create_model("resnet50_paper").eval()
    assert not any(isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.stride == (2, 2) for m in model.modules())
    block = model.stages[1].blocks[0]  # 256 -> 512 channels, 3x3 at stride 2
    assert block.conv2.conv.stride == (2, 2) and block.shortcut_chs == 256 and block.shortcut_stride == 2
    _silence_branch(block)
    x = torch.randn(1, 256, 8, 8)
    with torch.no_grad():
        y = block(x)
    torch.testing.assert_close(y[:, :256], nn.functional.leaky_relu(x[:, :, ::2, ::2], 0.1))
    assert y.shape == (1, 512, 4, 4) and y[:, 256:].abs().sum() == 0


def test_dark_block_has_no_activation_after_the_add() -> None:
    block = DarkBlock(8, 8, act="leaky").eval()
    _silence_branch(block)
    x = torch.randn(1, 8, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(block(x), x)


@pytest.mark.parametrize(
    ("name", "slope", "split_acts", "pool"),
    [
        ("cspresnet50", 0.01, ["linear"] * 4, (3, 2, 1)),
        ("cspresnet50_paper", 0.1, ["leaky", "linear", "linear", "leaky"], (2, 2, 0)),
        ("cspresnext50_paper", 0.1, ["leaky", "linear", "linear", "leaky"], (2, 2, 0)),
        ("cspdarknet53", 0.01, ["leaky"] * 5, None),
        ("cspdarknet53_paper", 0.1, ["leaky"] * 5, None),
    ],
)
def test_activations_split_convs_and_stem_pool(name: str, slope: float, split_acts: list[str], pool) -> None:
    model = cspnet.create_model(name)
    slopes = {m.negative_slope for m in model.modules() if isinstance(m, nn.LeakyReLU)}
    assert slopes == {slope}
    acts = ["linear" if isinstance(s.conv_exp.bn.act, nn.Identity) else "leaky" for s in model.stages]
    assert acts == split_acts
    down0 = model.stages[0].down
    if pool is None:
        assert isinstance(down0.conv, nn.Conv2d) and down0.conv.stride == (2, 2)
    else:
        assert isinstance(down0, nn.MaxPool2d)
        assert (down0.kernel_size, down0.stride, down0.padding) == pool


def test_drop_path_rate_rises_over_the_blocks() -> None:
    model = cspnet.create_model("cspdarknet53", drop_path_rate=0.2)
    rates = [b.drop_path.p if hasattr(b.drop_path, "p") else 0.0 for s in model.stages for b in s.blocks]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.2) and rates == sorted(rates)
    model.train()
    x = torch.randn(2, 3, 64, 64)
    torch.manual_seed(0)
    assert torch.isfinite(model(x)).all()


def test_config_overrides_and_validation() -> None:
    cfg = StageNetConfig(depths=(1, 1), out_chs=(32, 64), strides=(1, 2), expand_ratio=2.0)
    assert cfg.expand_ratio == (2.0, 2.0) and cfg.split_linear == (True, True)
    # gamma 0.25: the blocks take the block path's width (block_ratio=None)...
    model = cspnet.create_model("cspresnext50", partial_ratio=0.25, num_classes=3)
    assert [s.bypass_chs for s in model.stages] == [64, 128, 256, 512]
    assert [s.blocks[0].conv1.conv.in_channels for s in model.stages] == [192, 384, 768, 1536]
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 3)
    # ...unless block_ratio pins them: then only darknet's shortcut can join the two widths.
    with pytest.raises(ValueError, match="stage 0: its first block maps 192 to 128 channels"):
        cspnet.create_model("cspresnext50", partial_ratio=0.25, block_ratio=0.5)
    model = cspnet.create_model("cspresnext50", partial_ratio=0.25, block_ratio=0.5, shortcut="darknet")
    assert [s.blocks[0].conv1.conv.out_channels for s in model.stages] == [128, 256, 512, 1024]
    with pytest.raises(ValueError, match="expected 3 values, one per stage"):
        cspnet.create_model("cspresnet50", depths=(1, 1, 1))
    with pytest.raises(ValueError, match="partial_ratio=.*out of range"):
        cspnet.create_model("cspresnet50", partial_ratio=1.5)
    with pytest.raises(ValueError, match="strides\\[0\\] must be 1"):
        cspnet.create_model("cspresnet50", strides=(2, 2, 2, 2))
    with pytest.raises(ValueError, match="down='block'"):
        cspnet.create_model("cspresnet50", down="block")
    with pytest.raises(ValueError, match="shortcut='identity' cannot add"):
        cspnet.create_model("resnet50_paper", shortcut="identity")
    with pytest.raises(ValueError, match="block="):
        cspnet.create_model("darknet53", block="dense")
