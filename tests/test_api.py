"""create_model / list_models / pretrained=<file>: behaviour and errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import cspnet
from cspnet.convert.torchvision import torchvision_densenet_key
from peer_fixtures import assert_matches_logits, fixture_input, fixture_state_dict, load_fixture


def test_list_models_wildcards() -> None:
    names = cspnet.list_models()
    assert names == sorted(names)
    for expected in ("densenet121", "densenet264", "cspdensenet121", "cspdensenet264", "densenet_bc100"):
        assert expected in names
    assert cspnet.list_models("cspdensenet*") == [n for n in names if n.startswith("cspdensenet")]
    assert cspnet.list_models("densenet1?1") == ["densenet121", "densenet161"]
    assert cspnet.list_models("no-such-*") == []


def test_unknown_model_suggests_closest_names() -> None:
    with pytest.raises(cspnet.UnknownModelError, match="did you mean .*cspdensenet121"):
        cspnet.create_model("cspdensenet12")


@pytest.mark.parametrize(
    "override,message",
    [
        ({"partial_ratio": 1.5}, r"partial_ratio=1.5 is out of range: expected 0.0 <= partial_ratio < 1.0"),
        ({"partial_ratio": -0.1}, r"partial_ratio=-0.1 is out of range"),
        ({"fusion": "late"}, r"fusion='late' is invalid: expected one of 'csp', 'fusion_first', 'fusion_last'"),
        ({"growth_rate": 0}, r"growth_rate=0 is out of range: expected 1 <= growth_rate"),
        ({"growth_rate": 12.5}, r"growth_rate=12.5 is invalid: expected an integer"),
        ({"drop_path_rate": 1.0}, r"drop_path_rate=1.0 is out of range"),
        ({"block_config": (6, 0)}, r"block_config=\(6, 0\) is invalid"),
        ({"act": "tanhh"}, r"act='tanhh' is invalid: expected one of"),
        ({"compression": 0.0}, r"compression=0.0 is out of range: expected 0.0 < compression <= 1.0"),
    ],
)
def test_invalid_overrides_name_the_field_and_range(override: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cspnet.create_model("cspdensenet121", **override)


def test_unknown_override_lists_valid_fields() -> None:
    with pytest.raises(TypeError, match=r"unknown config field\(s\) partial_rate .* valid fields: .*partial_ratio"):
        cspnet.create_model("cspdensenet121", partial_rate=0.5)


@pytest.mark.parametrize("kwargs", [{"num_classes": -1}, {"in_chans": 0}, {"out_indices": (1,)}])
def test_invalid_create_model_arguments(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        cspnet.create_model("densenet121", **kwargs)


def test_out_indices_out_of_range() -> None:
    with pytest.raises(ValueError, match=r"out_indices=\(7,\) is invalid: this model has levels 0..4"):
        cspnet.create_model("densenet121", features_only=True, out_indices=(7,))


def test_overrides_reach_the_model() -> None:
    model = cspnet.create_model("densenet121", partial_ratio=0.25, fusion="fusion_last", growth_rate=16)
    assert model.config.partial_ratio == 0.25 and model.config.fusion == "fusion_last"
    assert model.stages[0].bypass_chs == 16  # 25 % of the 64-channel stem output bypasses stage 0
    assert isinstance(model.stages[0].conv_transition, torch.nn.Identity)  # fusion_last: no U


def test_densenet_is_cspdensenet_with_gamma_zero() -> None:
    dense = cspnet.create_model("densenet121")
    csp = cspnet.create_model("cspdensenet121", partial_ratio=0.0)
    assert dense.state_dict().keys() == csp.state_dict().keys()


# --- pretrained=<file> -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def torchvision_fixture() -> dict:
    return load_fixture("torchvision_densenet121.json")


def test_torchvision_checkpoint_as_published_reproduces_torchvision(tmp_path: Path, torchvision_fixture) -> None:
    # Published torchvision files: legacy "norm.1" keys and no num_batches_tracked buffers.
    state = fixture_state_dict(torchvision_fixture, drop_num_batches_tracked=True)
    assert any(".norm.1." in k for k in state)
    path = tmp_path / "densenet121-a639ec97.pth"
    torch.save(state, path)
    model = cspnet.create_model("densenet121", pretrained=path).eval()
    with torch.no_grad():
        assert_matches_logits(model(fixture_input(torchvision_fixture)), torchvision_fixture)


def test_torchvision_modern_key_spelling_also_loads(tmp_path: Path, torchvision_fixture) -> None:
    state = fixture_state_dict(torchvision_fixture)
    modern = {k.replace("norm.1", "norm1").replace("norm.2", "norm2").replace("conv.1", "conv1").replace(
        "conv.2", "conv2"): v for k, v in state.items()}
    path = tmp_path / "modern.pth"
    torch.save(modern, path)
    model = cspnet.create_model("densenet121", pretrained=path).eval()
    with torch.no_grad():
        assert_matches_logits(model(fixture_input(torchvision_fixture)), torchvision_fixture)


def test_key_conversion_covers_every_torchvision_key(torchvision_fixture) -> None:
    ours = set(cspnet.create_model("densenet121").state_dict())
    converted = {torchvision_densenet_key(k) for k, _, _ in torchvision_fixture["keys"]}
    assert converted == ours


@pytest.mark.parametrize("fmt", ["pth", "safetensors", "wrapped"])
def test_own_checkpoints_round_trip(tmp_path: Path, fmt: str) -> None:
    source = cspnet.create_model("cspdensenet_bc100", num_classes=10, partial_ratio=0.25).eval()
    state = source.state_dict()
    path = tmp_path / f"w.{'safetensors' if fmt == 'safetensors' else 'pt'}"
    if fmt == "safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    elif fmt == "wrapped":  # DDP / Lightning style wrappers and prefixes are unwrapped
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, path)
    else:
        torch.save(state, path)
    loaded = cspnet.create_model("cspdensenet_bc100", num_classes=10, partial_ratio=0.25, pretrained=path).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), source(x))


def test_wrong_model_checkpoint_lists_missing_unexpected_and_misshaped_keys(tmp_path: Path) -> None:
    path = tmp_path / "bc100.pt"
    torch.save(cspnet.create_model("densenet_bc100", num_classes=10).state_dict(), path)
    with pytest.raises(cspnet.CheckpointError) as err:
        cspnet.create_model("cspdensenet_bc100", num_classes=10, pretrained=path)
    text = str(err.value)
    assert "does not fit cspdensenet_bc100" in text
    assert "missing keys" in text and "mis-shaped keys" in text
    with pytest.raises(cspnet.CheckpointError, match="unexpected keys"):
        cspnet.create_model("densenet121", pretrained=path)


def test_other_num_classes_and_in_chans_adapt_instead_of_failing(tmp_path: Path, torchvision_fixture) -> None:
    path = tmp_path / "tv.pth"
    torch.save(fixture_state_dict(torchvision_fixture, drop_num_batches_tracked=True), path)
    model = cspnet.create_model("densenet121", pretrained=path, num_classes=10, in_chans=1)
    assert model.head.fc.out_features == 10 and model.stem.conv1.conv.in_channels == 1
    expected = fixture_state_dict(torchvision_fixture)["features.conv0.weight"].sum(1, keepdim=True)
    torch.testing.assert_close(model.stem.conv1.conv.weight, expected)


def test_files_are_read_without_executing_code(tmp_path: Path) -> None:
    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"x": Payload()}, path)
    with pytest.raises(cspnet.CheckpointError, match=r"refused: .* run Python code"):
        cspnet.create_model("densenet_bc100", pretrained=path)
    with pytest.raises(cspnet.CheckpointError, match="not found"):
        cspnet.create_model("densenet_bc100", pretrained=tmp_path / "missing.pt")


def test_pretrained_true_without_published_weights_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="no published weights are known for 'cspdensenet121'"):
        cspnet.create_model("cspdensenet121", pretrained=True)
