"""The uniform model API, checked on every registered model.

Each test runs twice per model (``model_cases``): with every stage cut to at most two blocks, in the
fast default run, and at the registered size, marked ``slow`` (``make test`` and CI run both).
"""

from __future__ import annotations

import pytest
import torch
import torch.fx

import cspnet
from cspnet.models.backbone import count_params
from model_cases import assert_same_training_step, model_cases

MODELS = cspnet.list_models(task="classification")
CASES = model_cases(MODELS)  # reduced by default, the registered sizes marked slow


def small_input(name: str, batch: int = 2) -> torch.Tensor:
    """The smallest input that every level of ``name`` still sees at 2x2 or more."""
    side = 16 if cspnet.get_model_entry(name).input_size[-1] <= 32 else 64
    return torch.randn(batch, 3, side, side, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(("name", "overrides"), CASES)
def test_forward_backward_reaches_every_parameter(name: str, overrides: dict) -> None:
    model = cspnet.create_model(name, num_classes=7, **overrides)
    x = small_input(name)
    out = model(x)
    assert out.shape == (2, 7)
    out.logsumexp(1).sum().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not no_grad, f"parameters without a finite gradient: {no_grad[:5]}"
    feats = model.forward_features(x)
    assert feats.shape[1] == model.num_features == model.feature_info[-1]["num_chs"]
    assert model.forward_head(feats, pre_logits=True).shape == (2, model.num_features)


@pytest.mark.parametrize(("name", "overrides"), CASES)
def test_features_agree_with_feature_info(name: str, overrides: dict) -> None:
    model = cspnet.create_model(name, features_only=True, **overrides).eval()
    x = small_input(name, batch=1)
    with torch.no_grad():
        maps = model(x)
    info = model.feature_info
    assert len(maps) == len(info)
    for fmap, level in zip(maps, info):
        assert fmap.shape[1] == level["num_chs"], level
        assert x.shape[-1] // fmap.shape[-1] == level["reduction"], level
    # out_indices selects levels, negative indices count from the deepest.
    last_two = cspnet.create_model(name, features_only=True, out_indices=(-2, -1), **overrides).eval()
    with torch.no_grad():
        tail = last_two(x)
    assert [t.shape for t in tail] == [m.shape for m in maps[-2:]]
    assert last_two.feature_info.channels() == info.channels()[-2:]


@pytest.mark.parametrize(("name", "overrides"), CASES)
def test_grad_checkpointing_gives_same_outputs_and_gradients(name: str, overrides: dict) -> None:
    torch.manual_seed(0)
    model = cspnet.create_model(name, num_classes=5, **overrides)
    checkpointed = cspnet.create_model(name, num_classes=5, **overrides)
    checkpointed.load_state_dict(model.state_dict())
    checkpointed.set_grad_checkpointing(True)
    assert_same_training_step(model, checkpointed, small_input(name))


@pytest.mark.parametrize(("name", "overrides"), CASES)
def test_scripting_and_fx_tracing_match_eager(name: str, overrides: dict) -> None:
    model = cspnet.create_model(name, num_classes=3, **overrides).eval()
    x = small_input(name, batch=1)
    with torch.no_grad():
        eager = model(x)
        torch.testing.assert_close(torch.jit.script(model)(x), eager)
        torch.testing.assert_close(torch.fx.symbolic_trace(model)(x), eager)


@pytest.mark.parametrize(("name", "overrides"), CASES)
def test_channels_last_in_chans_and_drop_path(name: str, overrides: dict) -> None:
    model = cspnet.create_model(name, in_chans=1, num_classes=4, drop_path_rate=0.2, **overrides).eval()
    x = small_input(name)[:, :1]
    with torch.no_grad():
        eager = model(x)
        cl = model.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    # Channels-last picks other conv kernels: compare relative to the output's scale (fp32 round-off
    # grows with depth and with the large activations of untrained 53-layer nets).
    torch.testing.assert_close(cl, eager, rtol=0, atol=1e-4 * eager.abs().max().item())
    model.train()
    assert model(x).shape == (2, 4)  # drop path active in training


@pytest.mark.parametrize(("name", "overrides"), CASES)
def test_reset_classifier_and_headless(name: str, overrides: dict) -> None:
    model = cspnet.create_model(name, num_classes=0, **overrides).eval()
    x = small_input(name, batch=1)
    with torch.no_grad():
        assert model(x).shape == (1, model.num_features)
        model.reset_classifier(12)
        assert model(x).shape == (1, 12)


# Exact parameter counts published by torchvision for its DenseNets.
TORCHVISION_PARAMS = {
    "densenet121": 7_978_856,
    "densenet169": 14_149_480,
    "densenet201": 20_013_928,
    "densenet161": 28_681_000,
}


@pytest.mark.parametrize("name,expected", TORCHVISION_PARAMS.items())
def test_densenet_parameter_counts_equal_torchvision(name: str, expected: int) -> None:
    with torch.device("meta"):
        assert count_params(cspnet.create_model(name)) == expected


def test_cspdensenet_stage_widths_equal_densenet() -> None:
    for depth in ("121", "169", "201", "264"):
        with torch.device("meta"):
            dense = cspnet.create_model(f"densenet{depth}")
            csp = cspnet.create_model(f"cspdensenet{depth}")
        assert csp.feature_info == dense.feature_info
    # CSPDenseNet is cheaper in parameters than its twin (and in MACs: see tests/test_profile.py).
    with torch.device("meta"):
        assert count_params(cspnet.create_model("cspdensenet121")) == 7_031_080
        assert count_params(cspnet.create_model("cspdensenet201")) == 17_729_576
