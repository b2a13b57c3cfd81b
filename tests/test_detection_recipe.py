"""The detection recipe's pieces: anchors fitted to the boxes, mixup and multi-scale with their boxes,
the recipe's defaults, and the settings that refuse nonsense.

Training with them (exact resume, freezing, transfer) is in tests/test_detection_transfer.py.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cspnet.detection.anchors import (
    MIN_IOU_GAIN,
    RECALL_IOU,
    anchor_quality,
    fit_anchors,
    training_box_sizes,
)
from cspnet.detection.data.mixup import DetectionMixup, MultiScale
from cspnet.detection.loss import shape_iou
from cspnet.models.detectors.config import YOLOV3_ANCHORS
from cspnet.training.detection_config import DIGITS_RECIPE, USER_RECIPE, DetectionTrainConfig
from detection_data import make_shapes, white_squares


# -- anchors ---------------------------------------------------------------------------------------
def skewed_boxes(seed: int, n: int = 400) -> torch.Tensor:
    """Tall thin boxes and small squares: what YOLOv3's COCO anchors fit badly."""
    g = torch.Generator().manual_seed(seed)
    tall = torch.stack([4 + 4 * torch.rand(n // 2, generator=g), 60 + 40 * torch.rand(n // 2, generator=g)], 1)
    small = (3 + 3 * torch.rand(n - n // 2, generator=g)).unsqueeze(1).repeat(1, 2)
    return torch.cat([tall, small])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fitted_anchors_recall_what_the_stock_ones_miss(seed):
    print(f"seed {seed}")
    wh = skewed_boxes(seed)
    fit = fit_anchors(wh, YOLOV3_ANCHORS, seed=seed)
    assert fit.before.bpr < 0.8 and fit.better
    assert fit.after.bpr >= 0.98 and fit.after.mean_iou > fit.before.mean_iou + 0.2
    assert fit.boxes == len(wh) and len(fit.anchors) == len(YOLOV3_ANCHORS)
    areas = [w * h for w, h in fit.anchors]
    assert areas == sorted(areas)  # smallest first: the finest scale gets the small ones
    assert fit.grid(3).shape == (3, 3, 2)
    # the reported quality is the quality of the anchors returned
    again = anchor_quality(wh, torch.tensor(fit.anchors))
    assert again.bpr == pytest.approx(fit.after.bpr, abs=1e-6) and again.mean_iou == pytest.approx(fit.after.mean_iou, abs=1e-3)


def test_the_fit_is_deterministic_and_seeded():
    wh = skewed_boxes(5)
    assert fit_anchors(wh, YOLOV3_ANCHORS, seed=3) == fit_anchors(wh, YOLOV3_ANCHORS, seed=3)


def test_anchors_that_fit_are_kept_and_too_few_boxes_change_nothing():
    wh = torch.tensor(YOLOV3_ANCHORS).repeat(20, 1)  # the boxes are the anchors
    fit = fit_anchors(wh, YOLOV3_ANCHORS)
    assert fit.anchors == tuple((float(w), float(h)) for w, h in YOLOV3_ANCHORS)
    assert fit.before.bpr == fit.after.bpr == 1.0 and not fit.better
    few = fit_anchors(torch.tensor([[5.0, 5.0], [8.0, 3.0]]), YOLOV3_ANCHORS)
    assert few.after == few.before
    with pytest.raises(ValueError, match="no boxes"):
        fit_anchors(torch.zeros(0, 2), YOLOV3_ANCHORS)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.floats(1, 300), st.floats(1, 300)), min_size=1, max_size=60), st.integers(0, 2**16))
def test_the_fit_never_makes_anchors_worse(sizes, seed):
    """Any boxes: the anchors returned are the stock ones, or fit better by the margin; positive and finite."""
    wh = torch.tensor(sizes)
    fit = fit_anchors(wh, YOLOV3_ANCHORS, seed=seed, generations=50)
    assert fit.after == fit.before or (fit.after.mean_iou >= fit.before.mean_iou + MIN_IOU_GAIN
                                       and fit.after.bpr >= fit.before.bpr)
    assert all(math.isfinite(v) and v > 0 for pair in fit.anchors for v in pair)


def test_best_possible_recall_counts_boxes_an_anchor_covers():
    anchors = torch.tensor([[10.0, 10.0]])
    wh = torch.tensor([[10.0, 10.0], [20.0, 20.0], [21.0, 21.0]])  # IoU 1, 0.25, below 0.25
    assert shape_iou(wh, anchors)[1, 0] == pytest.approx(RECALL_IOU)
    q = anchor_quality(wh, anchors)
    assert q.bpr == pytest.approx(2 / 3, abs=1e-6)


def test_box_sizes_of_files_are_read_without_decoding_and_match_the_items(tmp_path):
    from cspnet.detection.data import DetectionImages, read_yolo

    data = make_shapes(tmp_path / "d", 6, size=80)
    images = DetectionImages(read_yolo(data, "train"), 64)
    from_records = training_box_sizes(images)
    from_items = torch.cat([images[i][1][:, 3:5] - images[i][1][:, 1:3] for i in range(len(images))])
    torch.testing.assert_close(from_records, from_items, atol=1e-4, rtol=0)


# -- mixup and multi-scale -------------------------------------------------------------------------
def squares(n: int = 6, side: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    return white_squares(n, side, start=(3, 5), step=(4, 3), size=(14, 12))


@pytest.mark.parametrize("seed", [0, 7])
def test_mixup_keeps_the_boxes_of_both_images_on_their_objects(seed):
    print(f"seed {seed}")
    images, targets = squares()
    torch.manual_seed(seed)
    out, rows = DetectionMixup(p=1.0)(images, targets)
    assert out.shape == images.shape and len(rows) == 2 * len(targets)  # every image blended, both boxes kept
    for image, _cls, x1, y1, x2, y2 in rows.tolist():
        inside = out[int(image), 0, int(y1) + 1 : int(y2) - 1, int(x1) + 1 : int(x2) - 1]
        assert inside.min() > 0.3  # the object shows through the blend (ratios near one half)
    torch.manual_seed(seed)
    again = DetectionMixup(p=1.0)(images, targets)
    assert torch.equal(again[0], out) and torch.equal(again[1], rows)  # seeded: a resumed step redraws it
    assert DetectionMixup(p=0.0)(images, targets)[1] is targets
    assert DetectionMixup(p=1.0)(images[:1], targets[:1])[1] is not None  # one image: nothing to blend with


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_multi_scale_resizes_the_batch_and_its_boxes(seed):
    print(f"seed {seed}")
    images, targets = squares()
    transform = MultiScale(0.5, stride=16)
    torch.manual_seed(seed)
    out, rows = transform(images, targets)
    side = out.shape[-1]
    assert out.shape[-2] == side and side % 16 == 0 and side in transform.sides(48)
    torch.testing.assert_close(rows[:, 2:], targets[:, 2:] * side / 48)
    for image, _cls, x1, y1, x2, y2 in rows.tolist():
        inside = out[int(image), 0, math.ceil(y1) + 1 : int(y2) - 1, math.ceil(x1) + 1 : int(x2) - 1]
        assert inside.mean() > 0.9


def test_multi_scale_sides_are_stride_multiples_around_the_side():
    assert MultiScale(0.5, 32).sides(416) == list(range(224, 609, 32))  # 208-624
    assert MultiScale(0.0, 32).sides(416) == [416]
    assert MultiScale(0.9, 32).sides(64)[0] == 32  # never below one stride
    with pytest.raises(ValueError, match="multi_scale"):
        MultiScale(1.5, 32)


# -- the recipe's defaults and its settings --------------------------------------------------------
def test_digits_and_user_data_resolve_their_own_recipe(tmp_path):
    digits = DetectionTrainConfig().resolved(128)
    assert (digits.lr, digits.box_loss, digits.anchor_threshold, digits.mosaic, digits.mixup, digits.multi_scale) == (
        DIGITS_RECIPE.lr, DIGITS_RECIPE.box_loss, DIGITS_RECIPE.anchor_threshold, DIGITS_RECIPE.mosaic,
        DIGITS_RECIPE.mixup, DIGITS_RECIPE.multi_scale)
    user = DetectionTrainConfig(data=str(tmp_path / "data.yaml"), epochs=40).resolved(416)
    assert (user.lr, user.box_loss, user.anchor_threshold, user.mosaic, user.mixup, user.multi_scale,
            user.weight_decay, user.warmup_epochs) == (
        USER_RECIPE.lr, USER_RECIPE.box_loss, USER_RECIPE.anchor_threshold, USER_RECIPE.mosaic, USER_RECIPE.mixup,
        USER_RECIPE.multi_scale, USER_RECIPE.weight_decay, USER_RECIPE.warmup_epochs)
    mixing = USER_RECIPE.mosaic > 0 or USER_RECIPE.mixup > 0
    assert user.close_mosaic == (math.ceil(USER_RECIPE.close_mosaic_share * 40) if mixing else 0)
    assert (digits.fit_anchors, user.fit_anchors) == ("on" if DIGITS_RECIPE.fit_anchors else "off",
                                                      "on" if USER_RECIPE.fit_anchors else "off")
    given = DetectionTrainConfig(data="x.yaml", lr=0.5, box_loss="giou", mosaic=0.0, close_mosaic=3,
                                 fit_anchors="off").resolved(416)
    assert (given.lr, given.box_loss, given.mosaic, given.close_mosaic, given.fit_anchors) == (0.5, "giou", 0.0, 3, "off")


@settings(deadline=None)
@given(num_train=st.integers(1, 20_000), world=st.integers(1, 8))
def test_the_default_batch_leaves_enough_steps_per_epoch(num_train, world):
    """Your data's default batch: at least AUTO_BATCH_STEPS steps an epoch where the batch may shrink
    to the range's low end; never more than a process's share; the digits keep their 32."""
    from cspnet.training.datamodule import Batching
    from cspnet.training.detection_config import AUTO_BATCH_RANGE, AUTO_BATCH_STEPS, DIGITS_BATCH_SIZE

    config = DetectionTrainConfig(data="mine.yaml").with_data(num_train, world)
    share = -(-num_train // world)
    batch = config.batch_size
    assert batch is not None and 1 <= batch <= min(share, AUTO_BATCH_RANGE[1])
    steps = Batching.of(num_train, batch, world).steps
    if batch > AUTO_BATCH_RANGE[0]:
        assert steps >= AUTO_BATCH_STEPS or batch == AUTO_BATCH_RANGE[1]
    assert DetectionTrainConfig().with_data(num_train, world).batch_size == DIGITS_BATCH_SIZE
    assert DetectionTrainConfig(data="mine.yaml", batch_size=7).with_data(num_train, world).batch_size == 7


def test_a_run_on_user_data_records_the_batch_it_chose(tmp_path):
    """40 images and no --batch-size: batches of 4, ten steps an epoch (32 gave one: the rest was dropped)."""
    import json

    from cspnet.training.runner import fit

    data = make_shapes(tmp_path / "shapes", 40)
    fit(DetectionTrainConfig(data=str(data), img_size=32, epochs=1, limit_train_batches=2, calibrate_bn=0,
                             model_overrides={"neck_widths": (16, 32, 64)}, output=str(tmp_path / "run")),
        verbose=False)  # fmt: skip
    assert json.loads((tmp_path / "run" / "config.json").read_text())["batch_size"] == 4


def test_fine_tuning_shortens_the_warm_up_and_keeps_the_measured_rate(tmp_path):
    from cspnet.training.detection_config import FINETUNE_LR_FACTOR, FINETUNE_WARMUP_EPOCHS

    tuned = DetectionTrainConfig(pretrained="best.ckpt").resolved(128)
    assert tuned.lr == pytest.approx(DIGITS_RECIPE.lr * FINETUNE_LR_FACTOR)
    assert tuned.warmup_epochs == FINETUNE_WARMUP_EPOCHS
    assert DetectionTrainConfig(pretrained="best.ckpt", lr=0.02).resolved(128).lr == 0.02


@pytest.mark.parametrize(("settings_", "message"), [
    ({"freeze": "neck"}, "--freeze neck is invalid: expected 'backbone' or a number of stages"),
    ({"freeze": "-1"}, "--freeze -1 is invalid"),
    ({"freeze_epochs": 2}, "--freeze-epochs 2 is invalid without --freeze"),
    ({"freeze": "backbone", "freeze_epochs": 0}, "--freeze-epochs 0 is invalid"),
    ({"fit_anchors": "always"}, "--fit-anchors always is invalid"),
    ({"mixup": 1.5}, "--mixup 1.5 is invalid"),
    ({"multi_scale": 1.0}, "--multi-scale 1.0 is invalid"),
    ({"close_mosaic": -1}, "--close-mosaic -1 is invalid"),
    ({"pretrained_backbone": "/no/such/file.pth"}, "--pretrained-backbone /no/such/file.pth: file not found"),
])
def test_bad_recipe_settings_are_one_line_errors(settings_, message):
    with pytest.raises((ValueError, FileNotFoundError)) as caught:
        DetectionTrainConfig(**settings_).validate()
    assert message in str(caught.value) and len(str(caught.value).splitlines()) == 1


def test_both_pretrained_files_at_once_are_refused(tmp_path):
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"x")
    with pytest.raises(ValueError, match="--pretrained-backbone .* and --pretrained .* together"):
        DetectionTrainConfig(pretrained=str(weights), pretrained_backbone=str(weights)).validate()


@pytest.mark.parametrize("seed", [0, 3])
def test_mosaic_tiles_keep_the_objects_scale(seed):
    """Each tile shows its image at its own size: a square the split point does not cut keeps its 14 x 12 px,
    one it cuts keeps at least 40 % of its area; nothing is resized."""
    from cspnet.detection.data import Mosaic

    print(f"seed {seed}")
    images, targets = squares(8, side=64)
    torch.manual_seed(seed)
    out, moved = Mosaic(p=1.0)(images, targets)
    sides = moved[:, 4:6] - moved[:, 2:4]
    assert len(moved) and bool((sides <= torch.tensor([14.0, 12.0]) + 1e-4).all())
    assert bool((sides.prod(1) >= 0.4 * 14 * 12 - 1e-3).all())
    assert bool(((sides - torch.tensor([14.0, 12.0])).abs() < 1e-4).all(1).any())  # some squares stay whole
    assert set(torch.unique(out).tolist()) <= {0.0, 1.0}  # pixels copied, not interpolated
