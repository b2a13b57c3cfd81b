"""The cfg detectors cost exactly what darknet prints for their cfgs (conv layers only, 2 x MACs).

The printed figures (spec 2.10) are rounded; the exact FLOP counts next to them are the cfgs'
arithmetic (every ``[convolutional]``: 2 * C_in/groups * k^2 * C_out * H_out * W_out), which the
models here reproduce to the last FLOP. Profiles run on the meta device (shapes only).
"""

from __future__ import annotations

import subprocess
import sys

import pytest

import cspnet

# (model, input side, darknet's printout, exact 2 x conv MACs of the cfg)
CFG_FIGURES = [
    ("cspresnext50_panet_spp", 416, "47.063", 47_063_271_424),
    ("cspresnext50_panet_spp", 512, "71.291", 71_291_109_376),
    ("cspresnext50_panet_spp", 608, "100.53", 100_531_603_456),
    ("cspdarknet53_panet_spp", 512, "91.05", 91_046_281_216),
    ("cspresnet50_panet_spp", 512, "74.65", 74_646_552_576),
    ("darknet53_fpn_spp", 608, "141.45", 141_448_972_288),
]


@pytest.mark.parametrize(("name", "side", "printed", "exact"), CFG_FIGURES)
def test_cfg_bflops_are_reproduced_exactly(name: str, side: int, printed: str, exact: int) -> None:
    p = cspnet.profile(name, side)
    assert 2 * p.conv_macs == exact
    decimals = len(printed.split(".")[1])
    assert f"{p.darknet_bflops:.{decimals}f}" == printed
    assert [g.name for g in p.groups] == ["backbone", "neck", "head"]
    assert sum(g.conv_macs for g in p.groups) == p.conv_macs


def test_the_backbone_part_is_the_classification_backbone_without_its_classifier() -> None:
    detector = cspnet.profile("cspdarknet53_panet_spp", 512)
    backbone = cspnet.profile("cspdarknet53_paper", 512)
    classifier = next(g for g in backbone.groups if g.name == "head")
    assert detector.groups[0].conv_macs == backbone.conv_macs - classifier.conv_macs


def test_registered_figures_are_the_cfg_printouts() -> None:
    published = {
        (name, fig["input"]): fig["bflops"]
        for name in cspnet.list_models("*_spp")
        for fig in cspnet.get_model_entry(name).published
    }
    assert {k: f"{v}" for k, v in published.items()} == {(n, s): p for n, s, p, _ in CFG_FIGURES}


def test_cli_profile_prints_backbone_neck_and_head_rows() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "cspnet.cli.main", "profile", "cspresnext50_panet_spp", "--img-size", "416"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "47.063" in out
    rows = [line.split()[0] for line in out.splitlines() if line.split() and line.split()[0] in {"backbone", "neck", "head"}]
    assert rows == ["backbone", "neck", "head"]


def test_cli_models_lists_the_cfg_detectors_with_parameter_counts() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "cspnet.cli.main", "models", "*_spp"], capture_output=True, text=True, check=True
    ).stdout
    rows = {line.split()[0]: line.split()[1] for line in out.splitlines()[1:]}
    assert set(rows) == {"cspresnext50_panet_spp", "cspdarknet53_panet_spp", "cspresnet50_panet_spp", "darknet53_fpn_spp"}
    # PyTorch parameter counts (BN affine and prediction biases included), 80 classes.
    assert rows["darknet53_fpn_spp"] == "62,998,749"
    assert rows["cspresnext50_panet_spp"] == "56,942,525"
