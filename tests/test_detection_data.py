"""Detection data: COCO and YOLO read the same boxes into the same targets; EXIF, letterbox and
augmentation keep boxes on their objects; bad annotations are one-line errors naming the file."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from cspnet.detection.data import (
    BoxAugment,
    DetectionImages,
    Letterbox,
    collate_detection,
    digits_detection_split,
    letterbox_image,
    read_coco,
    read_yolo,
)
from detection_data import white_squares

CLASSES = ["cat", "dog", "bird"]
# (file, width, height, [(class, x1, y1, x2, y2), ...]) in pixels
IMAGES = [
    ("a.png", 80, 60, [(0, 10, 5, 30, 25), (2, 40, 30, 79, 59)]),
    ("b.png", 50, 90, [(1, 0, 0, 50, 45)]),
    ("c.png", 64, 64, []),  # background
]


def _draw(path: Path, width: int, height: int, boxes) -> None:
    """Black image with each box filled white (a recoverable object)."""
    array = np.zeros((height, width, 3), dtype=np.uint8)
    for _, x1, y1, x2, y2 in boxes:
        array[y1:y2, x1:x2] = 255
    Image.fromarray(array).save(path)


def write_coco(root: Path, images=IMAGES, categories=None) -> Path:
    (root / "images").mkdir(parents=True, exist_ok=True)
    categories = categories or [{"id": 10 + i, "name": n} for i, n in enumerate(CLASSES)]  # ids need not start at 0
    data = {"images": [], "annotations": [], "categories": categories}
    for i, (name, w, h, boxes) in enumerate(images):
        _draw(root / "images" / name, w, h, boxes)
        data["images"].append({"id": 100 + i, "file_name": name, "width": w, "height": h})
        for c, x1, y1, x2, y2 in boxes:
            data["annotations"].append({"id": len(data["annotations"]) + 1, "image_id": 100 + i, "category_id": 10 + c,
                                        "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    path = root / "instances.json"
    path.write_text(json.dumps(data))
    return path


def write_yolo(root: Path, images=IMAGES) -> Path:
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
    for name, w, h, boxes in images:
        _draw(root / "images" / "train" / name, w, h, boxes)
        lines = [f"{c} {(x1 + x2) / 2 / w:.8f} {(y1 + y2) / 2 / h:.8f} {(x2 - x1) / w:.8f} {(y2 - y1) / h:.8f}"
                 for c, x1, y1, x2, y2 in boxes]
        (root / "labels" / "train" / (Path(name).stem + ".txt")).write_text("\n".join(lines))
    path = root / "data.yaml"
    path.write_text(f"path: .\ntrain: images/train\nval: images/train\nnames: {json.dumps(CLASSES)}\n")
    return path


def test_coco_and_yolo_read_into_identical_targets(tmp_path):
    coco = DetectionImages(read_coco(write_coco(tmp_path / "coco")), 64)
    yolo = DetectionImages(read_yolo(write_yolo(tmp_path / "yolo")), 64)
    assert coco.classes == yolo.classes == CLASSES
    assert len(coco) == len(yolo) == 3
    for i in range(3):
        (ci, ct), (yi, yt) = coco[i], yolo[i]
        assert torch.equal(ci, yi)
        assert ct.shape == yt.shape == (len(IMAGES[i][3]), 5)
        torch.testing.assert_close(ct, yt, atol=1e-3, rtol=0)
    assert coco[2][1].shape == (0, 5)  # an image without boxes is a background image


def test_letterboxed_boxes_stay_on_their_objects_within_a_pixel(tmp_path):
    dataset = DetectionImages(read_coco(write_coco(tmp_path)), 96)
    for i in range(2):
        image, target = dataset[i]
        white = image.float().mean(0) > 200
        for _label, x1, y1, x2, y2 in target.tolist():
            inside = white[round(y1) : round(y2), round(x1) : round(x2)]
            assert inside.float().mean() > 0.9  # the box covers its white object...
            ys, xs = torch.nonzero(white[max(0, round(y1) - 3) : round(y2) + 3, max(0, round(x1) - 3) : round(x2) + 3], as_tuple=True)
            # ...and the object's edges are within a pixel of the box's.
            assert abs(xs.min().item() + max(0, round(x1) - 3) - x1) <= 1.0 and abs(xs.max().item() + 1 + max(0, round(x1) - 3) - x2) <= 1.0
            assert abs(ys.min().item() + max(0, round(y1) - 3) - y1) <= 1.0 and abs(ys.max().item() + 1 + max(0, round(y1) - 3) - y2) <= 1.0


@settings(max_examples=30, deadline=None)
@given(st.integers(8, 400), st.integers(8, 400), st.integers(16, 128))
def test_letterbox_maps_image_corners_into_the_input_and_back(width, height, size):
    lb = Letterbox.fit(width, height, size)
    corners = lb.to_input(torch.tensor([[0.0, 0.0, width, height]]))[0]
    assert corners[0] >= 0 and corners[1] >= 0 and corners[2] <= size + 1e-4 and corners[3] <= size + 1e-4
    assert max(float(corners[2] - corners[0]), float(corners[3] - corners[1])) == pytest.approx(size, abs=1)
    box = torch.tensor([[width * 0.1, height * 0.2, width * 0.7, height * 0.9]])
    torch.testing.assert_close(lb.to_image(lb.to_input(box)), box, atol=1e-3, rtol=1e-4)


def test_exif_orientation_is_applied(tmp_path):
    """A photo stored landscape with 'rotate 90' in its EXIF is a portrait image, its boxes in portrait pixels."""
    array = np.zeros((40, 80, 3), dtype=np.uint8)  # stored 80 wide, 40 high
    array[0:10, 0:20] = 255  # top-left of the stored image
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 clockwise to display
    root = tmp_path / "exif"
    (root / "images").mkdir(parents=True)
    Image.fromarray(array).save(root / "images" / "p.jpg", exif=exif, quality=100)
    # displayed 40 wide, 80 high; the white patch is now at the top right: x 30..40, y 0..20
    data = {"images": [{"id": 1, "file_name": "p.jpg"}], "categories": [{"id": 1, "name": "x"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [30, 0, 10, 20]}]}
    (root / "a.json").write_text(json.dumps(data))
    source = read_coco(root / "a.json")
    assert (source.records[0].width, source.records[0].height) == (40, 80)
    image, target = DetectionImages(source, 80)[0]
    x1, y1, x2, y2 = target[0, 1:].tolist()
    assert image[:, round(y1) + 2 : round(y2) - 2, round(x1) + 2 : round(x2) - 2].float().mean() > 200


def test_clipped_and_degenerate_boxes_are_counted_in_one_warning(tmp_path):
    images = [("a.png", 40, 40, [(0, 10, 10, 20, 20)]), ("b.png", 40, 40, [])]
    path = write_coco(tmp_path, images)
    data = json.loads(path.read_text())
    data["annotations"] += [
        {"id": 7, "image_id": 100, "category_id": 10, "bbox": [30, 30, 20, 20]},  # out of the image: clipped
        {"id": 8, "image_id": 101, "category_id": 11, "bbox": [-5, 5, 10, 10]},  # clipped
        {"id": 9, "image_id": 101, "category_id": 11, "bbox": [5, 5, 0, 10]},  # zero width: dropped
        {"id": 10, "image_id": 101, "category_id": 11, "bbox": [45, 5, 10, 10]},  # wholly outside: dropped
    ]
    path.write_text(json.dumps(data))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        source = read_coco(path)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "2 box(es) outside their image clipped, 2 degenerate box(es)" in messages[0], messages
    assert [len(r.boxes) for r in source.records] == [2, 1]
    assert source.records[0].boxes[1].tolist() == [30.0, 30.0, 40.0, 40.0]


def test_an_empty_label_file_is_a_background_image(tmp_path):
    path = write_yolo(tmp_path)
    assert (tmp_path / "labels" / "train" / "c.txt").read_text() == ""
    source = read_yolo(path)
    assert [len(r.boxes) for r in source.records] == [2, 1, 0]


@pytest.mark.parametrize(
    ("break_it", "message"),
    [
        (lambda p: p.write_text("{not json"), "not valid JSON"),
        (lambda p: p.write_text(p.read_text().replace('"category_id": 12', '"category_id": 99')), "category_id 99"),
        (lambda p: p.write_text(p.read_text().replace('"image_id": 101', '"image_id": 555')), "image_id 555"),
        (lambda p: (p.parent / "images" / "b.png").unlink(), "'b.png'"),
    ],
    ids=["unparsable", "class-out-of-range", "unknown-image-id", "missing-image-file"],
)
def test_bad_coco_files_are_errors_naming_the_file(tmp_path, break_it, message):
    path = write_coco(tmp_path)
    break_it(path)
    with pytest.raises(ValueError, match=message) as info:
        read_coco(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_yolo_class_out_of_range_names_the_label_file_and_line(tmp_path):
    path = write_yolo(tmp_path)
    label = tmp_path / "labels" / "train" / "a.txt"
    label.write_text(label.read_text() + "\n7 0.5 0.5 0.1 0.1")
    with pytest.raises(ValueError, match=r"a\.txt:3: class id 7 is out of range"):
        read_yolo(path)
    label.write_text("0 0.5 0.5 0.1")
    with pytest.raises(ValueError, match=r"a\.txt:1: expected 'class cx cy w h'"):
        read_yolo(path)


def test_collate_numbers_each_images_rows():
    images, targets = collate_detection([(torch.zeros(3, 8, 8, dtype=torch.uint8), torch.tensor([[1.0, 0, 0, 4, 4]])),
                                         (torch.zeros(3, 8, 8, dtype=torch.uint8), torch.zeros(0, 5)),
                                         (torch.zeros(3, 8, 8, dtype=torch.uint8), torch.tensor([[2.0, 1, 1, 5, 5]]))])
    assert images.shape == (3, 3, 8, 8)
    assert targets[:, :2].tolist() == [[0.0, 1.0], [2.0, 2.0]]


def test_augmentation_keeps_boxes_on_their_objects():
    """Random affine + flip move each white square and its box together (within a pixel)."""
    torch.manual_seed(0)
    n = 8
    images, rows = white_squares(n, 64, start=(8, 12), step=(3, 2), size=(12, 16))
    augment = BoxAugment(scale=(0.7, 1.3), translate=0.1, hflip=0.5, jitter=0.0)
    out, targets = augment(images, rows)
    assert len(targets) > 0
    for i, label, x1, y1, x2, y2 in targets.tolist():
        white = out[int(i)].mean(0) > 0.5
        ys, xs = torch.nonzero(white, as_tuple=True)
        assert abs(xs.min() - x1) <= 1.0 and abs(xs.max() + 1 - x2) <= 1.0
        assert abs(ys.min() - y1) <= 1.0 and abs(ys.max() + 1 - y2) <= 1.0
        assert label == int(i) % 3


def test_the_embedded_set_is_deterministic_and_tight():
    train_a, val_a = digits_detection_split(train_images=20, val_images=10)
    train_b, _ = digits_detection_split(train_images=20, val_images=10)
    assert torch.equal(train_a.images, train_b.images)
    assert all(torch.equal(a, b) for a, b in zip(train_a.targets, train_b.targets))
    assert train_a.classes == [str(i) for i in range(10)]
    counts = [len(t) for t in train_a.targets + val_a.targets]
    assert min(counts) >= 1 and max(counts) <= 4
    for t in train_a.targets:
        assert (t[:, 0] >= 0).all() and (t[:, 0] <= 9).all()
        assert (t[:, 1:3] >= 0).all() and (t[:, 3:5] <= 64).all() and (t[:, 3:5] > t[:, 1:3]).all()
    assert not torch.equal(train_a.images[:10], val_a.images)  # the splits differ


def test_letterbox_image_pads_with_grey():
    image, lb = letterbox_image(Image.new("RGB", (100, 50), (0, 0, 0)), 64)
    assert (lb.resized, lb.pad_y) == ((64, 32), 16)
    assert image[:, 0, 0].tolist() == [114, 114, 114] and image[:, 32, 32].tolist() == [0, 0, 0]


def test_mosaic_keeps_every_box_on_its_object() -> None:
    """Four images with one bright square each: after the mosaic every kept box still frames bright pixels."""
    import torch

    from cspnet.detection.data import Mosaic

    n = 6
    images, targets = white_squares(n, 48, start=(4, 6), step=(5, 3), size=(14, 12))
    torch.manual_seed(0)
    out, moved = Mosaic(p=1.0)(images, targets)
    assert out.shape == images.shape and len(moved) >= n  # four tiles per image: more boxes than before
    for image, _cls, x1, y1, x2, y2 in moved.tolist():
        inside = out[int(image), 0, int(y1) + 1 : int(y2) - 1, int(x1) + 1 : int(x2) - 1]
        assert inside.numel() and inside.mean() > 0.9  # the box frames its square (or the part in its tile)
    torch.manual_seed(0)
    again, moved_again = Mosaic(p=1.0)(images, targets)
    assert torch.equal(again, out) and torch.equal(moved_again, moved)  # seeded: a resumed step redraws it
    assert Mosaic(p=0.0)(images, targets)[1] is targets
