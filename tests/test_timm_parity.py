"""timm checkpoints of cspresnet50 / cspresnext50 / cspdarknet53 / darknet53 load unchanged.

The fixtures (../shared/fixtures) give timm's exact keys and, for two models, timm's logits on a
fixed input with weights drawn by a fixed rule; the weights are written in timm's own formats
(.safetensors and torch.save .pth) and loaded through ``create_model(pretrained=path)``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import cspnet
from cspnet.convert import CheckpointError
from cspnet.convert.timm import timm_csp_key
from peer_fixtures import assert_matches_logits, fixture_input, fixture_state_dict, load_fixture

LOGIT_FIXTURES = {"cspdarknet53": "timm_cspdarknet53.json", "cspresnext50": "timm_cspresnext50.json"}
MANIFESTS = {"cspresnet50": "timm_cspresnet50.manifest.json", "darknet53": "timm_darknet53.manifest.json"}
ALL_FIXTURES = {**LOGIT_FIXTURES, **MANIFESTS}


def save_timm(state: dict[str, torch.Tensor], path: Path) -> Path:
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path


@pytest.mark.parametrize("name", sorted(ALL_FIXTURES))
def test_keys_are_timms_with_conv_down_renamed(name: str) -> None:
    timm_keys = [key for key, _, _ in load_fixture(ALL_FIXTURES[name])["keys"]]
    own = cspnet.create_model(name).state_dict()
    assert list(own) == [timm_csp_key(k) for k in timm_keys]  # same names, same order
    shapes = {timm_csp_key(k): tuple(shape) for k, shape, _ in load_fixture(ALL_FIXTURES[name])["keys"]}
    assert {k: tuple(v.shape) for k, v in own.items()} == shapes


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
@pytest.mark.parametrize("name", sorted(LOGIT_FIXTURES))
def test_timm_checkpoint_reproduces_timm_logits(name: str, suffix: str, tmp_path: Path) -> None:
    fixture = load_fixture(LOGIT_FIXTURES[name])
    path = save_timm(fixture_state_dict(fixture), tmp_path / f"{name}{suffix}")
    model = cspnet.create_model(name, pretrained=path).eval()
    with torch.no_grad():
        logits = model(fixture_input(fixture))
    assert_matches_logits(logits, fixture)


@pytest.mark.parametrize("name", sorted(MANIFESTS))
def test_timm_manifest_checkpoint_loads_strictly(name: str, tmp_path: Path) -> None:
    state = fixture_state_dict(load_fixture(MANIFESTS[name]), drop_num_batches_tracked=True)
    path = save_timm(state, tmp_path / f"{name}.safetensors")
    model = cspnet.create_model(name, pretrained=path)
    own = model.state_dict()
    for key, value in state.items():
        torch.testing.assert_close(own[timm_csp_key(key)], value, msg=key)
    assert "stages.1.down.conv.weight" in own and any(".conv_down." in k for k in state)


def test_checkpoint_of_another_model_raises_a_clear_mismatch(tmp_path: Path) -> None:
    state = fixture_state_dict(load_fixture(MANIFESTS["darknet53"]))
    path = save_timm(state, tmp_path / "darknet53.safetensors")
    with pytest.raises(CheckpointError, match="does not fit cspdarknet53") as info:
        cspnet.create_model("cspdarknet53", pretrained=path)
    message = str(info.value)
    assert "missing keys" in message and "stages.0.conv_exp.conv.weight" in message
    assert "mis-shaped keys" in message


def test_timm_checkpoint_loads_into_another_head_and_input(tmp_path: Path) -> None:
    fixture = load_fixture(LOGIT_FIXTURES["cspresnext50"])
    state = fixture_state_dict(fixture)
    path = save_timm(state, tmp_path / "cspresnext50.safetensors")
    model = cspnet.create_model("cspresnext50", pretrained=path, num_classes=10, in_chans=1)
    torch.testing.assert_close(
        model.stem.conv1.conv.weight, state["stem.conv1.conv.weight"].sum(dim=1, keepdim=True)
    )
    torch.testing.assert_close(model.stages[3].down.conv.weight, state["stages.3.conv_down.conv.weight"])
    assert model.head.fc.out_features == 10
