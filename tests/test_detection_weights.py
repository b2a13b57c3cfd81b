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


def stack(name: str, in_chs: int, width: int, convs: int = 5, csp: bool = False) -> list[Layer]:
    """The cfgs' 5-conv stack: 1x1 w, 3x3 2w, 1x1 w, 3x3 2w, 1x1 w (``convs`` of them).

    ``csp``: its CSP stage as a Scaled-YOLOv4-style cfg writes it: two split convs (bypass, then the
    block path, w each), (convs - 1) / 2 pairs of 1x1/3x3 convs of w, T (1x1 w), then U (1x1 w) on
    the route ``[T, bypass]``.
    """
    if csp:
        layers = [(f"{name}.conv_exp", "bypass", width, in_chs, 1), (f"{name}.conv_exp", "path", width, in_chs, 1)]
        for j in range((convs - 1) // 2):
            layers += [(f"{name}.blocks.{j}.0", "conv", width, width, 1), (f"{name}.blocks.{j}.1", "conv", width, width, 3)]
        return layers + [(f"{name}.conv_transition_b", "conv", width, width, 1),
                         (f"{name}.conv_transition", "U", width, 2 * width, 1)]  # fmt: skip
    chs = ([width, 2 * width] * convs)[:convs]
    ins = [in_chs, *chs[:-1]]
    return [(f"{name}.{i}", "conv", c, x, 1 if i % 2 == 0 else 3) for i, (c, x) in enumerate(zip(chs, ins))]


def spp_block(c5: int, w: int, csp: bool = False) -> list[Layer]:
    """3 convs, SPP (4 x w channels), 3 convs; w = 512 in the cfgs."""
    return stack("neck.top.pre", c5, w, 3, csp) + stack("neck.top.post", 4 * w, w, 3, csp)


def head(level: int, width: int, classes: int) -> list[Layer]:
    return [
        (f"head.levels.{level}.0", "conv", 2 * width, width, 3),
        (f"head.levels.{level}.2", "pred", 3 * (5 + classes), 2 * width, 1),
    ]


def yolov3_spp_neck(classes: int, w: int = 128, csp: bool = False) -> list[Layer]:
    """yolov3-spp.cfg after Darknet-53: layers 75-113 (C3, C4, C5 = 256, 512, 1024; widths w, 2w, 4w)."""
    layers = spp_block(1024, 4 * w, csp) + head(2, 4 * w, classes)
    layers += [("neck.reduce2.0", "conv", 2 * w, 4 * w, 1)] + stack("neck.stack1", 2 * w + 512, 2 * w, csp=csp)
    layers += head(1, 2 * w, classes)
    layers += [("neck.reduce1.0", "conv", w, 2 * w, 1)] + stack("neck.stack0", w + 256, w, csp=csp) + head(0, w, classes)
    return layers


def panet_spp_neck(c3: int, c4: int, c5: int, classes: int, w: int = 128, csp: bool = False) -> list[Layer]:
    """csresnext50-panet-spp.cfg after the backbone: layers 81-137 (widths w, 2w, 4w)."""
    layers = spp_block(c5, 4 * w, csp)
    layers += [("neck.reduce2.0", "conv", 2 * w, 4 * w, 1), ("neck.lateral1", "conv", 2 * w, c4, 1)]
    layers += stack("neck.td1", 4 * w, 2 * w, csp=csp)
    layers += [("neck.reduce1.0", "conv", w, 2 * w, 1), ("neck.lateral0", "conv", w, c3, 1)]
    layers += stack("neck.td0", 2 * w, w, csp=csp) + head(0, w, classes)
    layers += [("neck.down0.layers.0", "conv", 2 * w, w, 3)] + stack("neck.bu1", 4 * w, 2 * w, csp=csp)
    layers += head(1, 2 * w, classes)
    layers += [("neck.down1.layers.0", "conv", 4 * w, 2 * w, 3)] + stack("neck.bu2", 8 * w, 4 * w, csp=csp)
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
    "darknet53_fpn_spp": (lambda: darknet53_cfg((1,) * 5), lambda classes, csp=False: yolov3_spp_neck(classes, 32, csp),
                          (1,) * 5),
    "cspresnext50_panet_spp": (
        lambda: cspresnext50_cfg((1,) * 4),
        lambda classes, csp=False: panet_spp_neck(512, 1024, 2048, classes, 32, csp),
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


def test_the_library_state_dict_round_trips(tmp_path: Path) -> None:
    model = cspnet.create_model("cspdensenet_bc40_efm", num_classes=3)
    torch.save(model.state_dict(), tmp_path / "detector.pt")
    loaded = cspnet.create_model("cspdensenet_bc40_efm", num_classes=3, pretrained=tmp_path / "detector.pt")
    assert all(torch.equal(a, b) for a, b in zip(_state(model).values(), _state(loaded).values()))
    # Another class count: everything but the prediction convs loads, they stay fresh (as a classifier's head).
    torch.manual_seed(0)
    fresh = cspnet.create_model("cspdensenet_bc40_efm", num_classes=5)
    torch.manual_seed(0)
    other = cspnet.create_model("cspdensenet_bc40_efm", num_classes=5, pretrained=tmp_path / "detector.pt")
    prediction = {f"head.levels.{i}.2.{kind}" for i in range(3) for kind in ("weight", "bias")}
    for key, value in other.state_dict().items():
        assert torch.equal(value, (fresh if key in prediction else model).state_dict()[key]), key
    with pytest.raises(CheckpointError, match="mis-shaped keys.*neck"):
        cspnet.create_model("cspdensenet_bc40_efm", num_classes=3, neck_widths=(16, 32, 64),
                            pretrained=tmp_path / "detector.pt")  # another width is no class count


# -- CSP necks: the same permutation as the backbone's CSP stages --------------------------------------


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_csp_neck_loads_with_its_stages_permuted_as_the_cfg_writes_them(name: str, tmp_path: Path) -> None:
    """Random tensors written in the cfg order of the CSP neck (split convs, [T, bypass] before U) land
    where the cfg puts them: without the neck's permutation U would load scrambled, and without error."""
    backbone, neck, _ = CASES[name]
    expected = write_weights(tmp_path / "n.weights", backbone(), neck(80, True))
    own = _state(create(name, neck_csp=True, pretrained=tmp_path / "n.weights"))
    assert set(own) == set(expected)
    for key, value in expected.items():
        assert torch.equal(own[key], value), key


def write_model_weights(path: Path, model: torch.nn.Module, layers: list[Layer]) -> None:
    """``model``'s tensors as a darknet file, in the cfg order ``layers`` (our names, cfg roles)."""
    state = _state(model)
    chunks: list[torch.Tensor] = []
    rows_done: dict[str, int] = {}
    for name, role, out, _, _ in layers:
        if role == "pred":
            chunks += [state[f"{name}.bias"], state[f"{name}.weight"].flatten()]
            continue
        start = rows_done.get(name, 0)  # the split convs: bypass rows, then block-path rows of conv_exp
        rows_done[name] = start + out
        weight = state[f"{name}.conv.weight"][start : start + out]
        if role == "U":  # ours [bypass, T] -> darknet's [T, bypass]
            bypass = weight.shape[1] // 2
            weight = torch.cat([weight[:, bypass:], weight[:, :bypass]], 1)
        bn = [state[f"{name}.bn.{key}"][start : start + out] for key in ("bias", "weight", "running_mean", "running_var")]
        chunks += [*bn, weight.flatten()]
    path.write_bytes(struct.pack("<3iq", 0, 2, 5, 0) + torch.cat(chunks).numpy().tobytes())


def test_a_csp_neck_detector_round_trips_through_a_darknet_file(tmp_path: Path) -> None:
    seed = 3
    print(f"seed {seed}")
    torch.manual_seed(seed)
    source = create("cspresnext50_panet_spp", neck_csp=True, num_classes=3).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # every weight and statistic random, BN variances positive
        for key, value in source.state_dict().items():
            if value.is_floating_point():
                value.copy_(torch.rand(value.shape, generator=gen) + 0.5 if key.endswith("running_var")
                            else torch.randn(value.shape, generator=gen) * 0.1)  # fmt: skip
    backbone, neck, _ = CASES["cspresnext50_panet_spp"]
    layers = [(f"backbone.{n}", *rest) for n, *rest in backbone()] + neck(3, True)
    write_model_weights(tmp_path / "m.weights", source, layers)
    loaded = create("cspresnext50_panet_spp", neck_csp=True, num_classes=3, pretrained=tmp_path / "m.weights").eval()
    for key, value in _state(source).items():
        assert torch.equal(_state(loaded)[key], value), key
    x = torch.rand(1, 3, 64, 64, generator=gen)
    with torch.no_grad():
        for a, b in zip(loaded(x), source(x)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_a_csp_stage_without_u_is_refused(tmp_path: Path) -> None:
    backbone, neck, _ = CASES["darknet53_fpn_spp"]
    write_weights(tmp_path / "d.weights", backbone(), neck(80))
    with pytest.raises(CheckpointError, match="a CSP stage without U"):
        create("darknet53_fpn_spp", neck_csp=True, neck_fusion="fusion_last", pretrained=tmp_path / "d.weights")

