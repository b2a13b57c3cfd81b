"""The cfg detectors cost exactly what darknet prints for their cfgs (conv layers only, 2 x MACs).

The printed figures (spec 2.10) are rounded; the exact FLOP counts next to them are the cfgs'
arithmetic (every ``[convolutional]``: 2 * C_in/groups * k^2 * C_out * H_out * W_out), which the
models here reproduce to the last FLOP. Profiles run on the meta device (shapes only).
"""

from __future__ import annotations

import pytest

import cspnet
from cspnet.cli.main import main

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


def test_cli_profile_prints_backbone_neck_and_head_rows(capsys: pytest.CaptureFixture) -> None:
    assert main(["profile", "cspresnext50_panet_spp", "--img-size", "416"]) == 0
    out = capsys.readouterr().out
    assert "47.063" in out
    rows = [line.split()[0] for line in out.splitlines() if line.split() and line.split()[0] in {"backbone", "neck", "head"}]
    assert rows == ["backbone", "neck", "head"]


def test_cli_models_lists_the_cfg_detectors_with_parameter_counts(capsys: pytest.CaptureFixture) -> None:
    assert main(["models", "*_spp"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split()[1] for line in out.splitlines()[1:]}
    assert set(rows) == {"cspresnext50_panet_spp", "cspdarknet53_panet_spp", "cspresnet50_panet_spp", "darknet53_fpn_spp"}
    # PyTorch parameter counts (BN affine and prediction biases included), 80 classes.
    assert rows["darknet53_fpn_spp"] == "62,998,749"
    assert rows["cspresnext50_panet_spp"] == "56,942,525"


def test_neck_comparison_rows_and_table() -> None:
    from cspnet.profiling.necks import NECK_VARIANTS, compare_necks, neck_comparison_table

    assert [label for label, _ in NECK_VARIANTS][:4] == ["FPN (YOLOv3)", "GFM (Fig. 6b)", "PANet", "EFM, Maxout 4"]
    variants = tuple(v for v in NECK_VARIANTS if v[1].get("neck") == "efm" and len(v[1]) <= 2)[:2]
    rows = compare_necks("cspdensenet_bc40_efm", 64, variants=variants)
    by_label = {r.label: r for r in rows}
    efm, plain = by_label["EFM, Maxout 4"], by_label["EFM without Maxout"]
    assert efm.memory.concat_bytes < plain.memory.concat_bytes and efm.memory.peak_bytes < plain.memory.peak_bytes
    assert efm.neck_bflops < plain.neck_bflops and efm.params < plain.params
    assert all(r.latency_ms is None for r in rows)
    table = neck_comparison_table(rows)
    assert len(table) == 2 + len(rows) and "CPU ms" not in table[0]
    assert table[2].startswith("| EFM, Maxout 4 | ")
