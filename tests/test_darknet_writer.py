"""``write_darknet_weights`` writes the file darknet writes: byte for byte the cfg-order files the
reader tests write by hand (``test_darknet_weights``, ``test_detection_weights``), so OpenCV's DNN
module and darknet read a model of this library with its cfg."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import cspnet
from cspnet.convert import CheckpointError, write_darknet_weights
from test_darknet_weights import CASES as CLASSIFIERS
from test_darknet_weights import write_darknet
from test_detection_weights import CASES as DETECTORS
from test_detection_weights import create, write_weights

HEADER = 20  # major, minor, revision (int32), seen (int64): the reader tests write seen=12345, the writer 0


@pytest.mark.parametrize("name", sorted(CLASSIFIERS))
def test_a_classifier_is_written_as_the_cfg_orders_it(name: str, tmp_path: Path) -> None:
    depths, cfg_layers, feat_chs = CLASSIFIERS[name]
    by_hand = tmp_path / "hand.weights"
    write_darknet(by_hand, cfg_layers(depths), feat_chs)
    model = cspnet.create_model(name, depths=depths, pretrained=by_hand)
    written = write_darknet_weights(model, tmp_path / "written.weights")
    assert written.read_bytes()[HEADER:] == by_hand.read_bytes()[HEADER:]


@pytest.mark.parametrize("csp_neck", [False, True])
@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_a_detector_is_written_as_the_cfg_orders_it(name: str, csp_neck: bool, tmp_path: Path) -> None:
    backbone, neck, _ = DETECTORS[name]
    by_hand = tmp_path / "hand.weights"
    write_weights(by_hand, backbone(), neck(80, csp_neck))
    model = create(name, neck_csp=csp_neck, pretrained=by_hand)
    written = write_darknet_weights(model, tmp_path / "written.weights", seen=7)
    assert written.read_bytes()[HEADER:] == by_hand.read_bytes()[HEADER:]
    assert written.read_bytes()[:HEADER] == bytes.fromhex("00000000020000000500000007000000" + "00000000")


def test_a_model_darknet_cannot_describe_is_refused_and_nothing_written(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="darknet .weights"):
        write_darknet_weights(cspnet.create_model("cspdensenet_bc40_efm", num_classes=3), tmp_path / "x.weights")
    assert list(tmp_path.iterdir()) == []


def test_the_round_trip_through_a_file_is_exact(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create("cspresnext50_panet_spp", num_classes=3)
    path = write_darknet_weights(model, tmp_path / "d.weights")
    again = create("cspresnext50_panet_spp", num_classes=3, pretrained=path)
    own, back = model.state_dict(), again.state_dict()
    for key, value in own.items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(back[key], value), key
