"""Darknet ``.weights`` files load into the ``_paper`` models, every tensor where the cfg puts it.

The test writes files itself, in darknet's format, from random tensors laid out in the cfg order the
spec gives (cspnet-paper.md sections 2.4 and 2.5), written here by hand and independently of the
reader: the two split convs of a CSP stage as two layers (bypass first) and U's input in darknet's
``[T, bypass]`` order.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import cspnet
from cspnet.convert import CheckpointError

# One cfg conv: (our module name, role, out channels, in channels per group, kernel).
# role: "conv" plain; "bypass" / "path" the two split convs (stacked into conv_exp); "U" (input [T, bypass]).
Layer = tuple[str, str, int, int, int]


def cspresnext50_cfg(depths: tuple[int, ...]) -> list[Layer]:
    """csresnext50.cfg (spec 2.4) with ``depths`` blocks per stage; cardinality 32."""
    layers: list[Layer] = [("stem.conv1", "conv", 64, 3, 7)]
    for i, c in enumerate((128, 256, 512, 1024)):
        s = f"stages.{i}"
        if i == 0:  # stage 1: bypass 64->128, block path 64->64, first block 64->128 (partial shortcut)
            layers += [(f"{s}.conv_exp", "bypass", 128, 64, 1), (f"{s}.conv_exp", "path", 64, 64, 1)]
        else:
            layers += [(f"{s}.down", "conv", c, c // 32, 3)]
            layers += [(f"{s}.conv_exp", "bypass", c, c, 1), (f"{s}.conv_exp", "path", c, c, 1)]
        for j in range(depths[i]):
            b = f"{s}.blocks.{j}"
            first_in = 64 if i == 0 and j == 0 else c
            layers += [(f"{b}.conv1", "conv", c, first_in, 1), (f"{b}.conv2", "conv", c, 4 * 2**i, 3)]
            layers += [(f"{b}.conv3", "conv", c, c, 1)]
        out = 256 if i == 0 else 2 * c
        layers += [(f"{s}.conv_transition_b", "conv", c, c, 1), (f"{s}.conv_transition", "U", out, 2 * c, 1)]
    return layers


def darknet53_cfg(depths: tuple[int, ...]) -> list[Layer]:
    """darknet53.cfg (spec 2.5) with ``depths`` blocks per stage."""
    layers: list[Layer] = [("stem.conv1", "conv", 32, 3, 3)]
    for i, c in enumerate((64, 128, 256, 512, 1024)):
        layers.append((f"stages.{i}.down", "conv", c, c // 2, 3))
        for j in range(depths[i]):
            b = f"stages.{i}.blocks.{j}"
            layers += [(f"{b}.conv1", "conv", c // 2, c, 1), (f"{b}.conv2", "conv", c, c // 2, 3)]
    return layers


CASES = {
    # model, depth override, cfg layers, classifier input
    "cspresnext50_paper": ((2, 1, 1, 1), cspresnext50_cfg, 2048),
    "darknet53_paper": ((1, 1, 1, 1, 1), darknet53_cfg, 1024),
}


def write_darknet(
    path: Path, layers: list[Layer], feat_chs: int, classes: int = 1000, version: tuple[int, int, int] = (0, 2, 5)
) -> dict[str, torch.Tensor]:
    """Write a darknet .weights file; return the state dict it must load as (this library's layout)."""
    gen = torch.Generator().manual_seed(0)
    chunks: list[torch.Tensor] = []
    parts: dict[str, dict[str, list[torch.Tensor]]] = {}
    for name, role, out, in_per_group, k in layers:
        bias, scale = torch.randn(out, generator=gen), 1 + torch.rand(out, generator=gen)
        mean, var = torch.randn(out, generator=gen), 0.5 + torch.rand(out, generator=gen)
        weight = torch.randn(out, in_per_group, k, k, generator=gen)
        chunks += [bias, scale, mean, var, weight.flatten()]  # darknet's order for a BN conv
        if role == "U":  # darknet's input is [T, bypass]; ours [bypass, T]; T is half of it here
            t = in_per_group // 2
            weight = torch.cat([weight[:, t:], weight[:, :t]], dim=1)
        entry = parts.setdefault(name, {"bn.bias": [], "bn.weight": [], "bn.running_mean": [], "bn.running_var": []})
        for key, value in zip(("bn.bias", "bn.weight", "bn.running_mean", "bn.running_var"), (bias, scale, mean, var)):
            entry[key].append(value)
        entry.setdefault("conv.weight", []).append(weight)  # "bypass" rows come before "path" rows
    fc_bias = torch.randn(classes, generator=gen)
    fc_weight = torch.randn(classes, feat_chs, generator=gen)
    chunks += [fc_bias, fc_weight.flatten()]  # the classifier conv has no BN: biases, then weights
    major, minor, revision = version
    seen = struct.pack("<q", 12345) if major * 10 + minor >= 2 else struct.pack("<i", 12345)
    path.write_bytes(struct.pack("<3i", major, minor, revision) + seen + torch.cat(chunks).numpy().tobytes())
    state = {f"{name}.{key}": torch.cat(values) for name, entry in parts.items() for key, values in entry.items()}
    state.update({"head.fc.bias": fc_bias, "head.fc.weight": fc_weight})
    return state


def assert_loads_in_cfg_order(name: str, depths: tuple[int, ...], cfg_layers: Callable[..., list], feat_chs: int,
                              tmp_path: Path) -> None:  # fmt: skip
    """A synthetic darknet file of ``cfg_layers(depths)`` read into ``name``: every tensor where the cfg puts it."""
    path = tmp_path / f"{name}.weights"
    expected = write_darknet(path, cfg_layers(depths), feat_chs)
    model = cspnet.create_model(name, depths=depths, pretrained=path)
    own = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert set(own) == set(expected)
    for key, value in expected.items():
        assert torch.equal(own[key], value), key


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_tensor_lands_where_the_cfg_puts_it(name: str, tmp_path: Path) -> None:
    assert_loads_in_cfg_order(name, *CASES[name], tmp_path)


@pytest.mark.parametrize("version", [(0, 1, 0), (0, 2, 0), (1, 0, 0)])
def test_header_versions(version: tuple[int, int, int], tmp_path: Path) -> None:
    """``seen`` is int32 before darknet 0.2 and int64 from then on."""
    depths, cfg_layers, feat_chs = CASES["darknet53_paper"]
    expected = write_darknet(tmp_path / "d.weights", cfg_layers(depths), feat_chs, version=version)
    model = cspnet.create_model("darknet53_paper", depths=depths, pretrained=tmp_path / "d.weights")
    assert torch.equal(model.head.fc.weight, expected["head.fc.weight"])


def test_classifier_of_another_size_is_left_fresh(tmp_path: Path) -> None:
    depths, cfg_layers, feat_chs = CASES["darknet53_paper"]
    expected = write_darknet(tmp_path / "d.weights", cfg_layers(depths), feat_chs)
    model = cspnet.create_model("darknet53_paper", depths=depths, num_classes=10, pretrained=tmp_path / "d.weights")
    assert model.head.fc.out_features == 10
    assert torch.equal(model.stages[4].down.conv.weight, expected["stages.4.down.conv.weight"])


def test_wrong_size_raises_a_clear_error(tmp_path: Path) -> None:
    depths, cfg_layers, feat_chs = CASES["darknet53_paper"]
    path = tmp_path / "d.weights"
    write_darknet(path, cfg_layers(depths), feat_chs)
    truncated = tmp_path / "truncated.weights"
    truncated.write_bytes(path.read_bytes()[:-4])
    with pytest.raises(CheckpointError, match=r"does not fit darknet53_paper: its 16 conv layers and classifier need [\d,]+ floats plus 1,025 per class"):
        cspnet.create_model("darknet53_paper", depths=depths, pretrained=truncated)
    # A file for another network (all depths 1) does not fit the full Darknet-53.
    with pytest.raises(CheckpointError, match="does not fit darknet53_paper.*another network"):
        cspnet.create_model("darknet53_paper", pretrained=path)


def test_models_darknet_cannot_describe_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.weights"
    path.write_bytes(struct.pack("<3iq", 0, 2, 0, 0) + bytes(400))
    with pytest.raises(CheckpointError, match="darknet .weights"):
        cspnet.create_model("densenet121", pretrained=path)


def test_a_file_without_the_classifier_loads_the_backbone_with_a_warning(tmp_path: Path, caplog) -> None:
    """darknet's `partial` output (e.g. darknet53.conv.74) holds the conv layers only."""
    import logging

    depths, cfg_layers, feat_chs = CASES["darknet53_paper"]
    expected = write_darknet(tmp_path / "d.weights", cfg_layers(depths), feat_chs, classes=0)
    torch.manual_seed(0)
    fresh = cspnet.create_model("darknet53_paper", depths=depths)
    torch.manual_seed(0)
    with caplog.at_level(logging.WARNING):
        model = cspnet.create_model("darknet53_paper", depths=depths, pretrained=tmp_path / "d.weights")
    assert "classifier not loaded: the checkpoint has 0 classes, the model 1000" in caplog.text
    assert torch.equal(model.stages[4].down.conv.weight, expected["stages.4.down.conv.weight"])
    assert torch.equal(model.head.fc.weight, fresh.head.fc.weight)
