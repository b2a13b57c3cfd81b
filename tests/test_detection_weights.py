"""Darknet ``.weights`` load into the cfg detectors, every tensor where the cfg puts it.

The files are written here from random tensors in the cfg's layer order, listed by hand from
``yolov3-spp.cfg`` and ``csresnext50-panet-spp.cfg`` (spec 2.10) independently of the reader: the
backbone as in ``test_darknet_weights``, then the neck and the heads interleaved as the cfg
interleaves them, each prediction conv (no BN) as biases then kernel. Backbones are cut to one
block per stage to keep the files small.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest
import torch

import cspnet
from cspnet.convert import CheckpointError
from test_darknet_weights import cspresnext50_cfg, darknet53_cfg

# (our module name, role, out channels, in channels, kernel); role "pred": conv with bias, no BN.
Layer = tuple[str, str, int, int, int]


def stack(name: str, in_chs: int, width: int) -> list[Layer]:
    """The cfgs' 5-conv stack: 1x1 w, 3x3 2w, 1x1 w, 3x3 2w, 1x1 w."""
    chs = [width, 2 * width] * 2 + [width]
    ins = [in_chs, width, 2 * width, width, 2 * width]
    return [(f"{name}.{i}", "conv", c, x, 1 if i % 2 == 0 else 3) for i, (c, x) in enumerate(zip(chs, ins))]


def spp_block(c5: int, w: int) -> list[Layer]:
    """3 convs, SPP (4 x w channels), 3 convs; w = 512 in the cfgs."""
    pre = [("neck.top.pre.0", "conv", w, c5, 1), ("neck.top.pre.1", "conv", 2 * w, w, 3)]
    pre += [("neck.top.pre.2", "conv", w, 2 * w, 1)]
    post = [("neck.top.post.0", "conv", w, 4 * w, 1), ("neck.top.post.1", "conv", 2 * w, w, 3)]
    return pre + post + [("neck.top.post.2", "conv", w, 2 * w, 1)]


def head(level: int, width: int, classes: int) -> list[Layer]:
    return [
        (f"head.levels.{level}.0", "conv", 2 * width, width, 3),
        (f"head.levels.{level}.2", "pred", 3 * (5 + classes), 2 * width, 1),
    ]


def yolov3_spp_neck(classes: int, w: int = 128) -> list[Layer]:
    """yolov3-spp.cfg after Darknet-53: layers 75-113 (C3, C4, C5 = 256, 512, 1024; widths w, 2w, 4w)."""
    layers = spp_block(1024, 4 * w) + head(2, 4 * w, classes)
    layers += [("neck.reduce2.0", "conv", 2 * w, 4 * w, 1)] + stack("neck.stack1", 2 * w + 512, 2 * w)
    layers += head(1, 2 * w, classes)
    layers += [("neck.reduce1.0", "conv", w, 2 * w, 1)] + stack("neck.stack0", w + 256, w) + head(0, w, classes)
    return layers


def panet_spp_neck(c3: int, c4: int, c5: int, classes: int, w: int = 128) -> list[Layer]:
    """csresnext50-panet-spp.cfg after the backbone: layers 81-137 (widths w, 2w, 4w)."""
    layers = spp_block(c5, 4 * w)
    layers += [("neck.reduce2.0", "conv", 2 * w, 4 * w, 1), ("neck.lateral1", "conv", 2 * w, c4, 1)]
    layers += stack("neck.td1", 4 * w, 2 * w)
    layers += [("neck.reduce1.0", "conv", w, 2 * w, 1), ("neck.lateral0", "conv", w, c3, 1)]
    layers += stack("neck.td0", 2 * w, w) + head(0, w, classes)
    layers += [("neck.down0.layers.0", "conv", 2 * w, w, 3)] + stack("neck.bu1", 4 * w, 2 * w) + head(1, 2 * w, classes)
    layers += [("neck.down1.layers.0", "conv", 4 * w, 2 * w, 3)] + stack("neck.bu2", 8 * w, 4 * w)
    return layers + head(2, 4 * w, classes)


def write_weights(path: Path, backbone: list, neck: list[Layer]) -> dict[str, torch.Tensor]:
    """Write a darknet file (backbone roles as in test_darknet_weights); return the expected state."""
    gen = torch.Generator().manual_seed(0)
    chunks: list[torch.Tensor] = []
    parts: dict[str, dict[str, list[torch.Tensor]]] = {}
    layers = [(f"backbone.{n}", *rest) for n, *rest in backbone] + neck
    for name, role, out, in_per_group, k in layers:
        weight = torch.randn(out, in_per_group, k, k, generator=gen)
        if role == "pred":
            bias = torch.randn(out, generator=gen)
            chunks += [bias, weight.flatten()]
            parts[name] = {"bias": [bias], "weight": [weight]}
            continue
        bias, scale = torch.randn(out, generator=gen), 1 + torch.rand(out, generator=gen)
        mean, var = torch.randn(out, generator=gen), 0.5 + torch.rand(out, generator=gen)
        chunks += [bias, scale, mean, var, weight.flatten()]
        if role == "U":  # darknet's input is [T, bypass]; ours [bypass, T]
            t = in_per_group // 2
            weight = torch.cat([weight[:, t:], weight[:, :t]], dim=1)
        entry = parts.setdefault(name, {"bn.bias": [], "bn.weight": [], "bn.running_mean": [], "bn.running_var": []})
        for key, value in zip(("bn.bias", "bn.weight", "bn.running_mean", "bn.running_var"), (bias, scale, mean, var)):
            entry[key].append(value)
        entry.setdefault("conv.weight", []).append(weight)
    path.write_bytes(struct.pack("<3iq", 0, 2, 5, 12345) + torch.cat(chunks).numpy().tobytes())
    return {f"{name}.{key}": torch.cat(values) for name, entry in parts.items() for key, values in entry.items()}


# The necks at a quarter of the cfgs' widths (w = 32, not 128) keep the files small; the layout
# and the backbone widths are the cfgs'.
WIDTHS = (32, 64, 128)
CASES = {
    "darknet53_fpn_spp": (lambda: darknet53_cfg((1,) * 5), lambda classes: yolov3_spp_neck(classes, 32), (1,) * 5),
    "cspresnext50_panet_spp": (
        lambda: cspresnext50_cfg((1,) * 4),
        lambda classes: panet_spp_neck(512, 1024, 2048, classes, 32),
        (1,) * 4,
    ),
}


def create(name: str, **kwargs: object) -> torch.nn.Module:
    depths = CASES[name][2]
    return cspnet.create_model(name, backbone_overrides={"depths": depths}, neck_widths=WIDTHS, **kwargs)


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_tensor_lands_where_the_cfg_puts_it(name: str, tmp_path: Path) -> None:
    backbone, neck, depths = CASES[name]
    path = tmp_path / f"{name}.weights"
    expected = write_weights(path, backbone(), neck(80))
    model = create(name, pretrained=path)
    own = _state(model)
    assert set(own) == set(expected)
    for key, value in expected.items():
        assert torch.equal(own[key], value), key


def test_a_file_for_other_classes_loads_all_but_the_prediction_convs(tmp_path: Path) -> None:
    backbone, neck, depths = CASES["darknet53_fpn_spp"]
    expected = write_weights(tmp_path / "d.weights", backbone(), neck(80))
    torch.manual_seed(0)
    fresh = _state(create("darknet53_fpn_spp", num_classes=3))
    torch.manual_seed(0)
    model = create("darknet53_fpn_spp", num_classes=3, pretrained=tmp_path / "d.weights")
    for key, value in _state(model).items():
        if re.fullmatch(r"head\.levels\.\d\.2\.(weight|bias)", key):  # the prediction convs
            assert torch.equal(value, fresh[key]), key
        else:
            assert torch.equal(value, expected[key]), key


def test_a_backbone_only_file_loads_the_backbone(tmp_path: Path) -> None:
    backbone, _, depths = CASES["cspresnext50_panet_spp"]
    expected = write_weights(tmp_path / "b.weights", backbone(), [])
    model = create("cspresnext50_panet_spp", pretrained=tmp_path / "b.weights")
    for key, value in expected.items():
        assert torch.equal(_state(model)[key], value), key


def test_a_file_that_does_not_fit_raises_naming_the_model(tmp_path: Path) -> None:
    backbone, neck, depths = CASES["darknet53_fpn_spp"]
    path = tmp_path / "d.weights"
    write_weights(path, backbone(), neck(80))
    truncated = tmp_path / "t.weights"
    truncated.write_bytes(path.read_bytes()[:-400])
    with pytest.raises(CheckpointError, match="does not fit darknet53_fpn_spp"):
        create("darknet53_fpn_spp", pretrained=truncated)


def test_detectors_on_backbones_darknet_cannot_describe_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.weights"
    path.write_bytes(struct.pack("<3iq", 0, 2, 0, 0) + bytes(400))
    with pytest.raises(CheckpointError, match="darknet .weights"):
        cspnet.create_model("cspdensenet_bc40_efm", pretrained=path)
