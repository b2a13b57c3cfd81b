"""optimize_for_inference / fold_conv_norm: same function as the eval-mode model, for every model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import cspnet
from cspnet.export import (
    find_conv_norm_pairs,
    find_conv_pool_pairs,
    fold_conv_norm,
    optimize_for_inference,
    pool_before_pointwise_conv,
)
from cspnet.export.fold import _pairs_from_graph, _pairs_from_structure
from cspnet.layers import BatchNormAct2d, ConvNormAct


def _with_random_norm_statistics(model: nn.Module, seed: int = 0) -> nn.Module:
    """Freshly initialised norms are identities; random statistics make the fold non-trivial."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.1)
    return model.eval()


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / a.abs().max()).item()


@pytest.mark.parametrize("name", cspnet.list_models(task="classification"))
def test_optimized_model_matches_eval_model(name: str) -> None:
    torch.manual_seed(0)
    model = _with_random_norm_statistics(cspnet.create_model(name, num_classes=10))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
    fast = optimize_for_inference(model)
    with torch.no_grad():
        got = fast(x.to(memory_format=torch.channels_last))
        got_contiguous = fast(x)
    assert _relative_error(expected, got) < 1e-5
    assert _relative_error(expected, got_contiguous) < 1e-5
    assert not fast.training
    # Nothing foldable is left: every ConvNormAct lost its norm, every remaining BN is pre-activation.
    assert find_conv_norm_pairs(fast) == []
    for m in fast.modules():
        if isinstance(m, ConvNormAct):
            assert not isinstance(m.bn, nn.BatchNorm2d) and m.conv.bias is not None
    conv_weight = next(m.weight for m in fast.modules() if isinstance(m, nn.Conv2d))
    assert conv_weight.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("name", cspnet.list_models(task="classification"))
def test_data_flow_and_structure_find_the_same_pairs(name: str) -> None:
    with torch.device("meta"):
        model = cspnet.create_model(name)
    pairs = _pairs_from_graph(model)
    assert pairs and sorted(pairs) == sorted(_pairs_from_structure(model))


def test_densenet_folds_its_bottleneck_into_norm2_only() -> None:
    model = cspnet.create_model("densenet_bc100")
    pairs = dict(find_conv_norm_pairs(model))
    assert pairs["stages.0.blocks.0.conv1"] == "stages.0.blocks.0.norm2"
    assert "stages.0.blocks.0.conv2" not in pairs  # followed by the next layer's pre-activation norm1 via cat
    folded = fold_conv_norm(model)
    layer = folded.stages[0].blocks[0]
    assert isinstance(layer.norm1, BatchNormAct2d) and isinstance(layer.norm2, nn.ReLU)


def test_original_model_is_left_untouched() -> None:
    model = cspnet.create_model("cspresnet50")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimize_for_inference(model)
    assert model.training
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_a_conv_read_elsewhere_is_not_folded() -> None:
    class Branching(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            return self.bn(y) + y  # y is needed unnormalised: folding would be wrong

    model = _with_random_norm_statistics(Branching())
    assert find_conv_norm_pairs(model) == []
    x = torch.randn(1, 3, 8, 8)
    torch.testing.assert_close(optimize_for_inference(model)(x), model(x))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("name", ["densenet_bc100", "cspdensenet121", "cspdarknet53", "cspresnext50"])
def test_optimized_model_scripts_and_traces(name: str) -> None:
    model = _with_random_norm_statistics(cspnet.create_model(name, num_classes=10))
    fast = optimize_for_inference(model)
    x = torch.randn(2, 3, 64, 64).to(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = fast(x)
        scripted = torch.jit.script(fast)
        traced = torch.jit.trace(fast, x)
        torch.testing.assert_close(scripted(x), expected, rtol=1e-5, atol=1e-6)
        assert traced(torch.randn(3, 3, 64, 64)).shape == (3, 10)


@pytest.mark.parametrize(("name", "moved"), [("densenet121", 3), ("cspdensenet201", 3), ("densenet_bc100", 2),
                                             ("csppeleenet", 0), ("cspdarknet53", 0)])  # fmt: skip
def test_pools_move_before_the_transition_convs_of_dense_networks(name: str, moved: int) -> None:
    with torch.device("meta"):
        model = cspnet.create_model(name)
    pairs = find_conv_pool_pairs(model)
    assert len(pairs) == moved
    assert all(p == (f"stages.{i}.conv_transition.conv", f"stages.{i + 1}.down") for i, p in enumerate(pairs))


def test_moving_pools_cuts_densenet121_macs_by_a_quarter_of_its_transitions() -> None:
    model = cspnet.create_model("densenet121")
    before, after = cspnet.profile(model, 224).macs, cspnet.profile(optimize_for_inference(model), 224).macs
    transitions = 56 * 56 * 256 * 128 + 28 * 28 * 512 * 256 + 14 * 14 * 1024 * 512
    assert before - after == transitions * 3 // 4
    assert (before, after) == (2_834_161_664, 2_602_950_656)


def test_features_only_outputs_keep_their_resolution() -> None:
    model = _with_random_norm_statistics(cspnet.create_model("densenet_bc100", features_only=True))
    assert find_conv_pool_pairs(model) == []
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        for got, expected in zip(optimize_for_inference(model)(x), model(x), strict=True):
            assert got.shape == expected.shape and _relative_error(expected, got) < 1e-5


def test_pool_move_is_exact_on_odd_sizes_and_skips_what_does_not_commute() -> None:
    model = _with_random_norm_statistics(cspnet.create_model("cspdensenet_bc100", num_classes=10))
    x = torch.randn(2, 3, 37, 37)  # odd maps: the 2x2 pools drop the last row and column
    with torch.no_grad():
        torch.testing.assert_close(pool_before_pointwise_conv(model)(x), model(x), rtol=1e-4, atol=1e-5)
    for conv, pool in [
        (nn.Conv2d(4, 4, 3, padding=1), nn.AvgPool2d(2)),  # a 3x3 conv mixes neighbours
        (nn.Conv2d(4, 4, 1), nn.AvgPool2d(2, padding=1)),  # padding averages zeros the bias never saw
        (nn.Conv2d(4, 4, 1), nn.MaxPool2d(2)),  # max is not linear
        (nn.Conv2d(4, 4, 1, stride=2), nn.AvgPool2d(2)),
    ]:
        assert find_conv_pool_pairs(nn.Sequential(conv, pool)) == []
    assert find_conv_pool_pairs(nn.Sequential(nn.Conv2d(4, 4, 1), nn.AvgPool2d(2))) == [("0", "1")]


def test_bf16_inference_stays_close_to_fp32() -> None:
    torch.manual_seed(0)
    model = _with_random_norm_statistics(cspnet.create_model("cspdensenet_bc100", num_classes=10))
    x = torch.randn(4, 3, 32, 32)
    fast = optimize_for_inference(model, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in fast.parameters())
    with torch.no_grad():
        got, expected = fast(x.bfloat16()), model(x)
    assert got.dtype == torch.bfloat16
    assert _relative_error(expected, got.float()) < 0.05
