"""What users look at: detect val's curves, confusion matrix and per-class table; results.png and the
loss parts in history.csv; test-time augmentation; progress bars only on a terminal; the real-photo set."""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

import seeding
from cspnet.cli.main import main
from cspnet.detection.metrics import coco_metrics
from cspnet.detection.tta import (
    VIEWS,
    View,
    augmented_predictions,
    boxes_to_image,
    decoded_predictions,
    view_image,
)
from cspnet.progress import progress
from cspnet.reports.detection import (
    ClassMatches,
    detection_confusion,
    f1_by_confidence,
    interpolated_precision,
    match_detections,
    val_curves,
)
from cspnet.training import DetectionTrainConfig, fit
from cspnet.training.plots import plot_history
from cspnet.training.tasks import get_task
from detection_data import make_shapes

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
import real_photos  # noqa: E402

SEED = seeding.rng("detection diagnostics").randrange(10**6)  # CSPNET_TEST_SEED repeats it


def random_case(rng: np.random.Generator, classes: int = 3):
    """Ground truth and detections of a few images: shifted copies of true boxes (some mislabelled)
    and boxes of nothing, all with distinct random scores. COCO is given results as a results file
    holds them (boxes to 0.01 px, scores to 5 decimals: ``coco_results``), so no detection overlaps a
    true box by an IoU within that rounding of 0.5, and no two scores are within it of each other:
    there the rounding, not the rule, decides."""
    while True:
        truth, found = _case(rng, classes)
        scores = np.sort(np.concatenate([f["scores"].numpy() for f in found]))
        if (not any(_near_the_threshold(t["boxes"], f["boxes"]) for t, f in zip(truth, found))
                and not (np.diff(scores) < 1e-4).any()):  # fmt: skip
            return truth, found


def _near_the_threshold(gt: torch.Tensor, dt: torch.Tensor, threshold: float = 0.5, margin: float = 5e-3) -> bool:
    from cspnet.ops.boxes import box_iou

    return bool(len(gt) and len(dt) and ((box_iou(dt.double(), gt.double()) - threshold).abs() < margin).any())


def _case(rng: np.random.Generator, classes: int):
    truth, found = [], []
    for _ in range(int(rng.integers(1, 6))):
        n = int(rng.integers(0, 7))
        xy = rng.uniform(0, 80, (n, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(5, 40, (n, 2))], 1)
        labels = rng.integers(0, classes, n)
        truth.append({"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels)})
        keep = rng.random(n) < 0.8
        copies = boxes[keep] + rng.normal(0, 4, (int(keep.sum()), 4))
        copy_labels = np.where(rng.random(int(keep.sum())) < 0.8, labels[keep], rng.integers(0, classes, int(keep.sum())))
        m = int(rng.integers(0, 4))
        xy = rng.uniform(0, 80, (m, 2))
        noise = np.concatenate([xy, xy + rng.uniform(5, 40, (m, 2))], 1)
        all_boxes = np.concatenate([copies, noise]).reshape(-1, 4)
        all_boxes[:, 2:] = np.maximum(all_boxes[:, 2:], all_boxes[:, :2] + 1)
        found.append({"boxes": torch.tensor(all_boxes, dtype=torch.float32),
                      "scores": torch.tensor(rng.uniform(0.01, 1, len(all_boxes)), dtype=torch.float32),
                      "labels": torch.tensor(np.concatenate([copy_labels, rng.integers(0, classes, m)]).astype(np.int64))})
    return truth, found


# -- the curves are COCO's ---------------------------------------------------------------------------
def test_the_precision_recall_curve_is_the_one_coco_averages():
    print("seed", SEED)
    rng = np.random.default_rng(SEED)
    names = ["a", "b", "c"]
    for _ in range(25):
        truth, found = random_case(rng)
        coco = coco_metrics(truth, found, names)
        curves = val_curves(truth, found, names)
        for k, name in enumerate(names):
            if coco["per_class_50"][name] is None:
                assert not curves.present[k]
                continue
            assert curves.precision[k].mean() == pytest.approx(coco["per_class_50"][name], abs=2e-6), (SEED, name)
        if coco["map50"] is not None:
            assert curves.precision[curves.present].mean() == pytest.approx(coco["map50"], abs=2e-6), SEED


def test_f1_against_confidence_on_a_hand_made_case():
    # Two objects; detections scoring 0.9 (right), 0.8 (wrong), 0.3 (right).
    m = ClassMatches(np.array([0.9, 0.8, 0.3]), np.array([True, False, True]), objects=2)
    precision, recall, f1 = f1_by_confidence(m)
    at = {c: int(round(c * 1000)) for c in (0.2, 0.5, 0.85, 0.95)}
    assert (precision[at[0.2]], recall[at[0.2]], f1[at[0.2]]) == pytest.approx((2 / 3, 1.0, 0.8))
    assert (precision[at[0.5]], recall[at[0.5]], f1[at[0.5]]) == pytest.approx((0.5, 0.5, 0.5))
    assert (precision[at[0.85]], recall[at[0.85]], f1[at[0.85]]) == pytest.approx((1.0, 0.5, 2 / 3))
    assert f1[at[0.95]] == 0.0 and precision[at[0.95]] == 1.0
    assert interpolated_precision(m).mean() == pytest.approx((51 * 1.0 + 50 * (2 / 3)) / 101)


def test_matching_takes_the_best_overlap_and_each_object_once():
    truth = [{"boxes": torch.tensor([[0.0, 0, 10, 10], [2, 0, 12, 10]]), "labels": torch.tensor([0, 0])}]
    found = [{"boxes": torch.tensor([[2.0, 0, 12, 10], [2, 0, 12, 10], [2, 0, 12, 10]]),
              "scores": torch.tensor([0.5, 0.9, 0.7]), "labels": torch.tensor([0, 0, 0])}]
    m = match_detections(truth, found, 1)[0]
    # 0.9 takes the object it equals, 0.7 the other one (IoU 0.67), 0.5 finds both taken.
    assert m.scores.tolist() == pytest.approx([0.9, 0.7, 0.5]) and m.true_positive.tolist() == [True, True, False]


def test_the_confusion_matrix_counts_every_object_and_every_confident_detection_once():
    print("seed", SEED)
    rng = np.random.default_rng(SEED + 1)
    for _ in range(25):
        truth, found = random_case(rng)
        matrix = detection_confusion(truth, found, 3, conf_threshold=0.25)
        for k in range(3):
            objects = sum(int((t["labels"] == k).sum()) for t in truth)
            confident = sum(int(((f["labels"] == k) & (f["scores"] > 0.25)).sum()) for f in found)
            assert int(matrix[k].sum()) == objects, SEED  # each object: found as some class, or missed
            assert int(matrix[:, k].sum()) == confident, SEED  # each detection: of some object, or of nothing
        assert int(matrix[3, 3]) == 0


# -- detect val / predict end to end (and what training writes) ---------------------------------------
class RecordParts(L.Callback):
    def __init__(self) -> None:
        self.values: dict[int, list[float]] = {}

    def on_train_batch_end(self, trainer, *args) -> None:
        self.values.setdefault(trainer.current_epoch, []).append(float(trainer.callback_metrics["train/box_loss"]))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("diag")
    data = make_shapes(root / "shapes", 6, repeat=2)
    record = RecordParts()
    cfg = DetectionTrainConfig(data=str(data), model_overrides={"neck_widths": (16, 32, 64)}, img_size=64, epochs=2,
                               batch_size=4, augment=False, output=str(root / "run"), checkpoint_every=0)
    fit(cfg, callbacks=[record], verbose=False)
    return root / "run", data, record


def test_history_holds_the_mean_of_each_loss_part_and_results_png_shows_them(run):
    out, _, record = run
    rows = list(csv.DictReader((out / "history.csv").open()))
    assert {"train_box_loss", "train_obj_loss", "train_cls_loss"} <= set(rows[0])
    for row in rows:
        steps = record.values[int(row["epoch"]) - 1]
        assert len(steps) == 3 and float(row["train_box_loss"]) == pytest.approx(sum(steps) / len(steps), rel=1e-6)
    for name in ("results.png", "learning_curves.png"):
        assert Image.open(out / name).size[0] >= 1000, name
    assert Image.open(out / "results.png").size == (1500, 800)  # five panels on two rows of three
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["per_class_ap50"]) == {"red", "green", "blue"}


def test_val_prints_per_class_ap_and_draws_its_pictures(run, tmp_path, capsys):
    out, data, _ = run
    assert main(["detect", "val", "--checkpoint", str(out / "last.ckpt"), "--output", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("class"))
    assert lines[header].split()[:4] == ["class", "objects", "AP@.5", "AP@[.5:.95]"]
    table = {line.split()[0]: line.split() for line in lines[header + 2 : header + 6]}
    result = json.loads((tmp_path / "val.json").read_text())
    assert set(table) == {"all", "red", "green", "blue"}
    for name in ("red", "green", "blue"):
        ap50 = result["per_class_50"][name]
        assert table[name][2] == ("n/a" if ap50 is None else f"{ap50:.3f}")
    for name in ("pr_curve.png", "f1_curve.png", "confusion_matrix.png"):
        assert Image.open(tmp_path / name).size[0] >= 500, name
    assert "\r" not in captured.err and "it/s" not in captured.err  # no progress bar off a terminal


def test_augment_on_val_and_predict(run, tmp_path, capsys):
    out, data, _ = run
    assert main(["detect", "val", "--checkpoint", str(out / "last.ckpt"), "--augment", "--output", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "val.json").read_text())["augment"] is True
    folder = tmp_path / "in"
    folder.mkdir()
    Image.open(data.parent / "images" / "0.png").resize((96, 80)).save(folder / "a.png")
    assert main(["detect", "predict", str(folder), "--checkpoint", str(out / "last.ckpt"), "--augment", "--conf",
                 "0.0001", "--output", str(tmp_path / "p")]) == 0  # fmt: skip
    for r in json.loads((tmp_path / "p" / "results.json").read_text()):
        x, y, w, h = r["bbox"]
        assert -0.01 <= x and -0.01 <= y and x + w <= 96.01 and y + h <= 80.01  # on the image, views merged


# -- test-time augmentation ----------------------------------------------------------------------------
@pytest.mark.parametrize("view", [*VIEWS, View(0.5, flip=True), View(0.71)], ids=str)
def test_boxes_found_on_a_view_map_back_onto_the_image(view):
    print("seed", SEED)
    rng = np.random.default_rng(SEED)
    image = torch.zeros(1, 3, 96, 128)
    x, scale = view_image(image, view)
    assert x.shape == image.shape
    boxes = torch.tensor(rng.uniform(0, 90, (1, 5, 4)), dtype=torch.float32).sort(-1).values
    # Where the view shows each box: mirrored, then scaled by the factor actually used.
    seen = torch.stack([128 - boxes[..., 2], boxes[..., 1], 128 - boxes[..., 0], boxes[..., 3]], -1) if view.flip else boxes
    seen = seen * torch.tensor([scale[0], scale[1], scale[0], scale[1]])
    torch.testing.assert_close(boxes_to_image(seen, view, scale, 128), boxes, rtol=0, atol=1e-4)


def test_every_view_of_a_drawn_square_finds_it_where_it_is():
    def bright_box(x):  # a "detector" of the one bright square of each image
        boxes = []
        for img in x:
            rows, cols = torch.nonzero(img[0] > 0.5, as_tuple=True)
            boxes.append(torch.stack([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]).float())
        return torch.stack(boxes)[:, None], torch.ones(len(x), 1, 1)

    image = torch.zeros(2, 3, 96, 128)
    image[0, :, 20:50, 70:110] = 1.0
    image[1, :, 60:90, 4:40] = 1.0
    boxes, scores = augmented_predictions(bright_box, image)
    assert boxes.shape == (2, len(VIEWS), 4) and scores.shape == (2, len(VIEWS), 1)
    truth = torch.tensor([[70.0, 20, 110, 50], [4, 60, 40, 90]])
    for v, view in enumerate(VIEWS):
        torch.testing.assert_close(boxes[:, v], truth, rtol=0, atol=2 / view.scale, msg=str(view))


def test_views_of_uint8_images_are_uint8_with_the_letterbox_grey():
    image = torch.full((1, 3, 64, 96), 200, dtype=torch.uint8)
    x, scale = view_image(image, View(0.5, flip=True))
    assert x.dtype == torch.uint8 and x.shape == image.shape and scale == (0.5, 0.5)
    assert int(x[0, 0, 10, 10]) == 200 and int(x[0, 0, 40, 60]) == 114  # the image, then the letterbox grey


def test_the_first_view_is_the_plain_prediction():
    from cspnet.models import create_model

    torch.manual_seed(0)
    model = create_model("cspdensenet_bc40_efm", num_classes=3, neck_widths=(16, 32, 64)).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.inference_mode():
        plain = decoded_predictions(model, x)
        augmented = decoded_predictions(model, x, augment=True)
    k = plain[0].shape[1]
    assert augmented[0].shape[1] == len(VIEWS) * k
    torch.testing.assert_close(augmented[0][:, :k], plain[0])
    torch.testing.assert_close(augmented[1][:, :k], plain[1])


def test_a_view_must_shrink():
    with pytest.raises(ValueError, match=r"scale must be in \(0, 1\]"):
        View(1.5)


# -- progress bars ---------------------------------------------------------------------------------
class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_progress_bar_is_drawn_on_a_terminal_only(monkeypatch):
    quiet = io.StringIO()
    monkeypatch.setattr(sys, "stderr", quiet)
    assert list(progress(range(5), total=5, desc="evaluating")) == list(range(5))
    assert quiet.getvalue() == ""
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert list(progress(range(5), total=5, desc="evaluating")) == list(range(5))
    assert "evaluating" in terminal.getvalue() and "0/5" in terminal.getvalue()  # drawn (and removed at the end)


# -- learning curves -----------------------------------------------------------------------------------
def test_learning_curves_use_a_log_scale_where_values_span_decades(tmp_path, monkeypatch):
    from cspnet.training import plots

    (tmp_path / "history.csv").write_text("epoch,train_loss,val_loss\n1,5.0,2e7\n2,5.0,40\n3,5.0,6\n4,5.0,5\n")
    figures = []
    original = plots.new_figure
    monkeypatch.setattr(plots, "new_figure", lambda *size: figures.append(original(*size)) or figures[-1])
    plot_history(tmp_path / "history.csv", tmp_path / "c.png", get_task("detection").panels[:1])
    ax = figures[0].axes[0]
    assert ax.get_yscale() == "log" and "(log scale)" in ax.get_title()


# -- the real-photo set ------------------------------------------------------------------------------
def synthetic_sources() -> real_photos.Sources:
    """Stand-ins with the real sources' shapes: grey objects, pure blue backgrounds (no download)."""
    rng = np.random.default_rng(0)
    coins = np.full((303, 384), 40, np.uint8)
    yy, xx = np.mgrid[0:303, 0:384]
    for r in range(4):
        for c in range(6):
            coins[(yy - 45 - 70 * r) ** 2 + (xx - 35 - 62 * c) ** 2 < 22**2] = 200
    faces = rng.uniform(0.6, 1.0, (100, 25, 25))
    chelsea = np.full((300, 451, 3), 220, np.uint8)
    blue = np.zeros((300, 400, 3), np.uint8)
    blue[..., 2] = 255
    backgrounds = {name: blue for name in real_photos.BACKGROUNDS}
    return real_photos.Sources(backgrounds, coins, chelsea, faces, rng.uniform(0.6, 1.0, (100, 25, 25)))


def test_real_photo_boxes_are_tight_around_what_was_pasted():
    print("seed", SEED)
    sources = synthetic_sources()
    train, val = real_photos.split_pools(sources, seed=0)
    assert len(train.objects[0]) == 17 and len(val.objects[0]) == 7  # the 24 coins, none in both splits
    assert not {id(c) for c in train.objects[1]} & {id(c) for c in val.objects[1]}
    rng = np.random.default_rng(SEED)
    for _ in range(20):
        image, boxes = real_photos.compose(train, list(sources.backgrounds.values()), rng)
        # A grey object of any tone pasted with alpha a over blue leaves red - blue = -(1 - a) * 255:
        # above -127.5 exactly where the object covers more than half the pixel (what its box frames).
        covered = image[..., 0].astype(np.float64) - image[..., 2] > -127.5 - 1  # 1: uint8 rounding
        for _, x1, y1, x2, y2 in boxes:
            x1, y1, x2, y2 = map(int, (x1, y1, x2, y2))
            inside = covered[y1:y2, x1:x2]
            # every edge of the box touches the object: the box is tight
            assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any(), SEED
            band = np.zeros(covered.shape, bool)
            band[max(0, y1 - 1) : y2 + 1, max(0, x1 - 1) : x2 + 1] = True
            band[y1:y2, x1:x2] = False
            assert not (image[..., 0].astype(np.float64) - image[..., 2])[band].max(initial=-255) > -127.5 + 1, SEED


def test_the_real_photo_set_is_read_by_the_project_and_is_the_same_every_time(tmp_path):
    from cspnet.detection.data import read_yolo

    for name in ("a", "b"):
        real_photos.build_real_photos(tmp_path / name, train=6, val=3, seed=3, sources=synthetic_sources())
    train = read_yolo(tmp_path / "a" / "data.yaml", "train")
    val = read_yolo(tmp_path / "a" / "data.yaml", "val")
    summary = json.loads((tmp_path / "a" / "dataset.json").read_text())
    assert len(train.records) == 6 and len(val.records) == 3 and train.classes == ["coin", "face", "cat"]
    assert train.box_count == summary["train"]["boxes"] and val.box_count == summary["val"]["boxes"]
    for folder in ("images/train", "labels/train", "labels/val"):
        for f in sorted((tmp_path / "a" / folder).iterdir()):
            assert f.read_bytes() == (tmp_path / "b" / folder / f.name).read_bytes(), f


def test_the_peer_table_names_each_run_and_marks_a_loaded_machine():
    import detection_peer

    machine = {"cpu": "Test CPU", "cores": 2, "load_average": [1.0, 1.0, 1.0]}
    runs = [{"detector": "YOLOv8n (ultralytics, from yolov8n.yaml)", "params": 3011433, "map50": 0.506, "map": 0.329,
             "wall_s": 110.0, "own_map50": 0.512, "own_map": 0.321, "machine": machine, "load_after": [3.2, 3.0, 3.0]},
            {"detector": "cspdensenet_bc40_efm", "params": 1683256, "map50": None, "map": 0.0, "wall_s": 80.4,
             "machine": machine, "load_after": [1.2, 1.0, 1.0]}]  # fmt: skip
    settings = {"data": "d/data.yaml", "epochs": 30, "img_size": 128, "batch_size": 16, "seed": 0}
    lines = detection_peer.table({"settings": settings, "runs": runs})
    assert "30 epochs, image size 128, batch 16" in lines[0] and "Test CPU (2 cores)" in lines[0]
    rows = [line for line in lines if line.startswith("| YOLO") or line.startswith("| csp")]
    assert rows[0] == ("| YOLOv8n (ultralytics, from yolov8n.yaml) | 3,011,433 | 0.506 (its own evaluator: 0.512 / 0.321) "
                       "| 0.329 | 110 s | 3.2 (under load) |")  # fmt: skip
    assert rows[1] == "| cspdensenet_bc40_efm | 1,683,256 | n/a | 0.000 | 80 s | 1.2 |"
