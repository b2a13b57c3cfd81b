"""Transfer learning for detectors: a backbone from classification weights (every format the project reads),
a detector of another class count fine-tuned with a new head, freezing; fitted anchors in the checkpoint.

Exact resume of a run that uses the whole recipe (freezing and fitted anchors included) is in
tests/test_detection_train.py.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

import cspnet
from cspnet.training import DetectionTrainConfig, TrainConfig, fit, load_trained
from cspnet.training.detection_module import DetectorModule
from detection_data import make_shapes

TINY = {"neck_widths": (16, 32, 64)}
BACKBONE = ("cspdensenet_bc40", {"small_input": False})  # what cspdensenet_bc40_efm is built on


def quick(data: Path, out: Path, **kwargs) -> DetectionTrainConfig:
    return DetectionTrainConfig(**{"data": str(data), "model_overrides": TINY, "img_size": 64, "epochs": 1,
                                   "batch_size": 4, "checkpoint_every": 0, "output": str(out), **kwargs})  # fmt: skip


def module_for(cfg: DetectionTrainConfig, num_classes: int = 3) -> DetectorModule:
    """The training module a run of ``cfg`` builds (without running it)."""
    cfg = cfg.resolved(64)
    return DetectorModule(cfg.model, dict(cfg.model_overrides), num_classes, [str(i) for i in range(num_classes)],
                          cfg.side, [0.0] * 3, [1.0] * 3, cfg.to_dict(), 1)  # fmt: skip


def backbone_state(module_state: dict[str, torch.Tensor], prefix: str = "model.backbone.") -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in module_state.items() if k.startswith(prefix)}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return make_shapes(tmp_path_factory.mktemp("shapes") / "d", 8, seed=2)


@pytest.fixture(scope="module")
def classifier_file(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A classifier's state dict with random non-trivial BN statistics, saved as a plain torch file."""
    torch.manual_seed(11)
    name, overrides = BACKBONE
    model = cspnet.create_model(name, num_classes=7, **overrides)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
    path = tmp_path_factory.mktemp("weights") / "classifier.pth"
    torch.save(model.state_dict(), path)
    return path, model.state_dict()


# -- --pretrained-backbone -------------------------------------------------------------------------
def test_a_classifier_file_becomes_the_detector_backbone(classifier_file, tmp_path, caplog):
    path, state = classifier_file
    module = module_for(quick(tmp_path / "d.yaml", tmp_path / "r", pretrained_backbone=str(path)))
    loaded = module.model.backbone.state_dict()
    assert loaded and all(torch.equal(value, state[key]) for key, value in loaded.items())
    ema = module.ema.module.backbone.state_dict()  # the average starts from the loaded weights
    assert all(torch.equal(value, state[key]) for key, value in ema.items())


def test_a_cspnet_train_checkpoint_becomes_the_detector_backbone(tmp_path):
    name, overrides = BACKBONE
    run = fit(TrainConfig(model=name, model_overrides=overrides, img_size=32, epochs=1, limit_train_batches=2,
                          checkpoint_every=0, output=str(tmp_path / "cls")), verbose=False)  # fmt: skip
    ckpt = torch.load(run.output / "last.ckpt", weights_only=True)
    ema = ckpt["ema_state_dict"]["module"]  # what `cspnet train` ships
    module = module_for(quick(tmp_path / "d.yaml", tmp_path / "r", pretrained_backbone=str(run.output / "last.ckpt")))
    for key, value in module.model.backbone.state_dict().items():
        torch.testing.assert_close(value, ema[key], rtol=0, atol=0, msg=key)


@pytest.mark.parametrize("partial", [False, True], ids=["full", "conv_partial"])
def test_darknet_classifier_weights_and_partial_conv_files_become_the_backbone(partial, tmp_path, caplog):
    from test_darknet_weights import CASES, write_darknet

    depths, cfg_layers, feat_chs = CASES["darknet53_paper"]
    name = "darknet53.conv.74" if partial else "darknet53.weights"  # darknet's partial names its files so
    expected = write_darknet(tmp_path / name, cfg_layers(depths), feat_chs, classes=0 if partial else 1000)
    cfg = quick(tmp_path / "d.yaml", tmp_path / "r", model="darknet53_fpn_spp", pretrained_backbone=str(tmp_path / name),
                model_overrides={"backbone_overrides": {"depths": depths}, "neck_widths": (16, 32, 64), "spp": False})
    module = module_for(cfg)
    loaded = module.model.backbone.state_dict()
    for key, value in expected.items():
        if not key.startswith("head."):
            torch.testing.assert_close(loaded[key], value, rtol=0, atol=0, msg=key)


def test_a_backbone_file_that_does_not_fit_is_one_clear_error(tmp_path):
    from cspnet.convert import CheckpointError

    path = tmp_path / "other.pth"
    torch.save(cspnet.create_model("cspdarknet53", num_classes=0).state_dict(), path)
    with pytest.raises(CheckpointError, match="does not fit"):
        module_for(quick(tmp_path / "d.yaml", tmp_path / "r", pretrained_backbone=str(path)))


# -- --freeze --------------------------------------------------------------------------------------
def test_a_frozen_backbone_keeps_its_weights_and_statistics(classifier_file, shapes, tmp_path):
    path, state = classifier_file
    fit(quick(shapes, tmp_path / "r", pretrained_backbone=str(path), freeze="backbone", augment=False), verbose=False)
    ckpt = torch.load(tmp_path / "r" / "last.ckpt", weights_only=True)
    trained = backbone_state(ckpt["state_dict"])
    averaged = ckpt["ema_state_dict"]["module"]
    for key, value in trained.items():
        if not key.endswith("num_batches_tracked"):
            torch.testing.assert_close(value, state[key], rtol=0, atol=0, msg=key)  # BN statistics included
            torch.testing.assert_close(averaged[f"backbone.{key}"], state[key], rtol=0, atol=0, msg=key)
    neck = {k: v for k, v in ckpt["state_dict"].items() if k.startswith("model.neck.") and v.is_floating_point()}
    fresh = cspnet.create_model("cspdensenet_bc40_efm", num_classes=3, **TINY).state_dict()
    assert any(not torch.equal(v, fresh[k[len("model."):]]) for k, v in neck.items())  # the rest trained


def test_freezing_the_first_stages_for_one_epoch_then_training_them(classifier_file, shapes, tmp_path):
    path, state = classifier_file
    first = quick(shapes, tmp_path / "a", pretrained_backbone=str(path), freeze="1", freeze_epochs=1, augment=False)
    fit(first, verbose=False)
    one = backbone_state(torch.load(tmp_path / "a" / "last.ckpt", weights_only=True)["state_dict"])
    assert all(torch.equal(one[k], state[k]) for k in one if k.startswith(("stem.", "stages.0.")))
    assert not all(torch.equal(one[k], state[k]) for k in one if k.startswith("stages.1."))  # not frozen
    two = quick(shapes, tmp_path / "b", pretrained_backbone=str(path), freeze="1", freeze_epochs=1, augment=False,
                epochs=2)
    fit(two, verbose=False)
    both = backbone_state(torch.load(tmp_path / "b" / "last.ckpt", weights_only=True)["state_dict"])
    assert not all(torch.equal(both[k], state[k]) for k in both if k.startswith("stem."))  # trained in epoch 2


def test_freezing_more_stages_than_the_backbone_has_is_one_clear_error(tmp_path):
    with pytest.raises(ValueError, match="--freeze 9 is invalid: the backbone has 3 stages"):
        module_for(quick(tmp_path / "d.yaml", tmp_path / "r", freeze="9"))


# -- --pretrained of a detector for other classes; anchors in the checkpoint -----------------------
def test_a_detector_for_other_classes_fine_tunes_with_a_new_head(shapes, tmp_path, caplog):
    fit(quick(shapes, tmp_path / "three", fit_anchors="on"), verbose=False)
    source = torch.load(tmp_path / "three" / "last.ckpt", weights_only=True)
    four = shapes.parent / "four.yaml"  # the same images, one class more
    four.write_text(shapes.read_text().replace("names: [red, green, blue]", "names: [red, green, blue, grey]"))
    with caplog.at_level(logging.WARNING):
        fit(quick(four, tmp_path / "new", pretrained=str(tmp_path / "three" / "last.ckpt"), freeze="backbone"),
            verbose=False)
    assert "prediction layers not loaded: the checkpoint has 3 classes, the model 4" in caplog.text
    tuned = torch.load(tmp_path / "new" / "last.ckpt", weights_only=True)
    assert tuned["num_classes"] == 4
    assert tuned["model_overrides"]["anchors"] == source["model_overrides"]["anchors"]  # its head learnt those
    started = source["ema_state_dict"]["module"]  # --pretrained starts from the shipped (EMA) weights
    kept = backbone_state(tuned["state_dict"])
    assert all(torch.equal(v, started[f"backbone.{k}"]) for k, v in kept.items() if v.is_floating_point())


def test_fitted_anchors_are_the_ones_inference_builds(shapes, tmp_path):
    fit(quick(shapes, tmp_path / "r", fit_anchors="on"), verbose=False)
    ckpt = torch.load(tmp_path / "r" / "last.ckpt", weights_only=True)
    anchors = ckpt["model_overrides"]["anchors"]
    stock = cspnet.create_model("cspdensenet_bc40_efm", num_classes=3).get_buffer("anchors")
    assert len(anchors) == 9 and torch.tensor(anchors).reshape(3, 3, 2).tolist() != stock.tolist()
    trained = load_trained(tmp_path / "r" / "last.ckpt", task="detection")
    torch.testing.assert_close(trained.model.get_buffer("anchors"), torch.tensor(anchors).reshape(3, 3, 2))
