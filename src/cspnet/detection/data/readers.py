"""The two box formats users have, read into one record per image, and the data set that decodes them.

* **COCO**: an instances JSON (``images``, ``annotations`` with ``bbox = [x, y, w, h]`` in pixels,
  ``categories``) and its image folder (by default the JSON's own folder, or ``images/`` beside it).
  Category ids may be anything; classes are the categories sorted by id. Crowd annotations
  (``iscrowd: 1``) are not trained on.
* **YOLO**: a ``data.yaml`` (``path``, ``train``, ``val``, ``names``) whose image folders have
  label folders beside them (``.../images/x.jpg`` -> ``.../labels/x.txt``), one ``class cx cy w h``
  line per box, normalised to the image. An empty or absent label file is a background image.

Both give boxes ``x1, y1, x2, y2`` in pixels of the image as it is displayed (EXIF orientation
applied), so the same boxes in either format read into identical targets. Out-of-image boxes are
clipped and degenerate ones dropped, counted in one warning per source; a class id out of range, a
file that does not parse, or an annotation naming a missing image is a ``ValueError`` naming the file.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from cspnet.data.folder import IMAGE_EXTENSIONS
from cspnet.detection.data.boxes import BoxHygiene, Letterbox, clean_boxes, letterbox_image

_ROTATED = (5, 6, 7, 8)  # EXIF orientations that swap width and height


@dataclass
class ImageRecord:
    """One image and its boxes (``x1, y1, x2, y2`` in its displayed pixels) and class indices."""

    path: Path
    width: int
    height: int
    boxes: Tensor  # (K, 4) float32
    labels: Tensor  # (K,) int64
    image_id: int


@dataclass
class DetectionSource:
    """The records of one split and the class names they index."""

    records: list[ImageRecord]
    classes: list[str]
    origin: str  # the file they came from, for messages


def open_image(path: str | os.PathLike[str]) -> Any:
    """Decode ``path`` with Pillow, EXIF orientation applied, as RGB; ``ValueError`` naming the file."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return ImageOps.exif_transpose(img).convert("RGB")
    except (OSError, UnidentifiedImageError, SyntaxError) as exc:
        raise ValueError(f"cannot read image {path}: {exc}") from exc


def displayed_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` as displayed (EXIF rotation applied), from the header only."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            width, height = img.size
            orientation = img.getexif().get(0x0112, 1)
    except (OSError, UnidentifiedImageError, SyntaxError) as exc:
        raise ValueError(f"cannot read image {path}: {exc}") from exc
    return (height, width) if orientation in _ROTATED else (width, height)


def _warn_hygiene(hygiene: BoxHygiene, origin: str) -> None:
    message = hygiene.message(origin)
    if message:
        warnings.warn(message, stacklevel=3)


# -- COCO ------------------------------------------------------------------------------------------
def _coco_image_folder(json_path: Path, images: str | os.PathLike[str] | None, first_file: str | None) -> Path:
    if images is not None:
        folder = Path(images)
        if not folder.is_dir():
            raise FileNotFoundError(f"image folder not found: {folder}")
        return folder
    for folder in (json_path.parent, json_path.parent / "images", json_path.parent.parent / "images"):
        if first_file is None or (folder / first_file).is_file():
            return folder
    return json_path.parent


def _load_coco_json(path: Path) -> dict[str, Any]:
    """The parsed instances file, checked to have COCO's three lists."""
    if not path.is_file():
        raise FileNotFoundError(f"COCO annotation file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from exc
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not a text file ({exc.reason})") from exc
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "annotations", "categories")):
        raise ValueError(f"{path}: not a COCO instances file (expected lists 'images', 'annotations' and 'categories')")
    return data


def _coco_boxes(path: Path, data: dict[str, Any], image_ids: set[int], index_of: dict[int, int],
                ) -> tuple[dict[int, list[list[float]]], dict[int, list[int]]]:  # fmt: skip
    """xyxy boxes and class indices per image id (crowd annotations left out)."""
    boxes: dict[int, list[list[float]]] = {image_id: [] for image_id in image_ids}
    labels: dict[int, list[int]] = {image_id: [] for image_id in image_ids}
    for ann in data["annotations"]:
        try:
            image_id, category, bbox = int(ann["image_id"]), int(ann["category_id"]), [float(v) for v in ann["bbox"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: malformed annotation {ann.get('id', '?') if isinstance(ann, dict) else ann!r} "
                             f"({type(exc).__name__}: {exc})") from exc  # fmt: skip
        if image_id not in boxes:
            raise ValueError(f"{path}: annotation {ann.get('id', '?')} names image_id {image_id}, which is not in 'images'")
        if category not in index_of:
            raise ValueError(f"{path}: annotation {ann.get('id', '?')} has category_id {category}, which is not in "
                             f"'categories' (ids {', '.join(str(c) for c in list(index_of)[:10])})")  # fmt: skip
        if len(bbox) != 4:
            raise ValueError(f"{path}: annotation {ann.get('id', '?')} has bbox {ann['bbox']!r}, expected [x, y, w, h]")
        if ann.get("iscrowd", 0):
            continue
        x, y, w, h = bbox
        boxes[image_id].append([x, y, x + w, y + h])
        labels[image_id].append(index_of[category])
    return boxes, labels


def read_coco(path: str | os.PathLike[str], images: str | os.PathLike[str] | None = None) -> DetectionSource:
    """An instances JSON and its images (``images`` folder, else found beside the JSON)."""
    path = Path(path)
    data = _load_coco_json(path)
    try:
        categories = sorted((int(c["id"]), str(c["name"])) for c in data["categories"])
        index_of = {cid: i for i, (cid, _) in enumerate(categories)}
        entries = [(int(im["id"]), str(im["file_name"]), im.get("width"), im.get("height")) for im in data["images"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: malformed 'categories' or 'images' entry ({type(exc).__name__}: {exc})") from exc
    if not categories:
        raise ValueError(f"{path}: 'categories' is empty: a detector needs at least one class")
    folder = _coco_image_folder(path, images, entries[0][1] if entries else None)
    boxes, labels = _coco_boxes(path, data, {image_id for image_id, *_ in entries}, index_of)
    hygiene = BoxHygiene()
    records = []
    for image_id, file_name, width, height in entries:
        image_path = folder / file_name
        if not image_path.is_file():
            raise ValueError(f"{path}: image {file_name!r} (id {image_id}) is not in {folder}")
        if not (isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0):
            width, height = displayed_size(image_path)
        kept, kept_labels, clipped, dropped = clean_boxes(
            torch.tensor(boxes[image_id], dtype=torch.float32).reshape(-1, 4),
            torch.tensor(labels[image_id], dtype=torch.long), width, height,
        )  # fmt: skip
        hygiene.note(file_name, clipped, dropped)
        records.append(ImageRecord(image_path, width, height, kept, kept_labels, image_id))
    _warn_hygiene(hygiene, str(path))
    return DetectionSource(records, [name for _, name in categories], str(path))


# -- YOLO ------------------------------------------------------------------------------------------
def _yolo_names(yaml_path: Path, data: dict[str, Any]) -> list[str]:
    names = data.get("names")
    if isinstance(names, dict):
        try:
            ordered = sorted((int(k), str(v)) for k, v in names.items())
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{yaml_path}: 'names' keys must be class ids 0..N-1") from exc
        if [k for k, _ in ordered] != list(range(len(ordered))):
            raise ValueError(f"{yaml_path}: 'names' keys must be the class ids 0..{len(ordered) - 1}")
        names = [v for _, v in ordered]
    if isinstance(names, list) and names:
        return [str(n) for n in names]
    nc = data.get("nc")
    if isinstance(nc, int) and nc > 0:
        return [str(i) for i in range(nc)]
    raise ValueError(f"{yaml_path}: no class names (expected 'names': a list, or a dict of id: name)")


def _label_path(image: Path) -> Path:
    """``.../images/a/b.jpg`` -> ``.../labels/a/b.txt`` (the last ``images`` folder becomes ``labels``)."""
    parts = list(image.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            return Path(*parts).with_suffix(".txt")
    return image.with_suffix(".txt")


def _yolo_images(root: Path, entry: Any, yaml_path: Path, split: str) -> list[Path]:
    entries = entry if isinstance(entry, list) else [entry]
    found: list[Path] = []
    for item in entries:
        place = Path(str(item))
        place = place if place.is_absolute() else root / place
        if place.is_dir():
            found += sorted(p for p in place.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        elif place.is_file() and place.suffix == ".txt":  # a list of image paths, one per line
            for line in place.read_text().splitlines():
                if line.strip():
                    image = Path(line.strip())
                    found.append(image if image.is_absolute() else root / image)
        else:
            raise FileNotFoundError(f"{yaml_path}: {split} images not found at {place}")
    return found


def read_yolo(path: str | os.PathLike[str], split: str = "train") -> DetectionSource:
    """The ``split`` (``train``/``val``/``test``) of a YOLO ``data.yaml``."""
    import yaml  # type: ignore[import-untyped]

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"YOLO data file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping with 'train', 'val' and 'names'")
    classes = _yolo_names(path, data)
    if data.get(split) is None:
        raise ValueError(f"{path}: no '{split}' entry (the folder of the {split} images)")
    root = Path(str(data.get("path") or "."))
    root = root if root.is_absolute() else path.parent / root
    hygiene = BoxHygiene()
    records = []
    for image_id, image in enumerate(_yolo_images(root, data[split], path, split)):
        if not image.is_file():
            raise ValueError(f"{path}: {split} image {image} not found")
        width, height = displayed_size(image)
        rows = _read_label_file(_label_path(image), len(classes))
        labels = torch.tensor([int(r[0]) for r in rows], dtype=torch.long)
        norm = torch.tensor([r[1:] for r in rows], dtype=torch.float64).reshape(-1, 4)
        cx, cy, w, h = norm.unbind(1)
        boxes = torch.stack([(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height], 1)
        kept, kept_labels, clipped, dropped = clean_boxes(boxes.float(), labels, width, height)
        hygiene.note(image.name, clipped, dropped)
        records.append(ImageRecord(image, width, height, kept, kept_labels, image_id))
    if not records:
        raise ValueError(f"{path}: the {split} split has no images")
    _warn_hygiene(hygiene, f"{path} ({split})")
    return DetectionSource(records, classes, f"{path} ({split})")


def _read_label_file(path: Path, num_classes: int) -> list[tuple[float, ...]]:
    if not path.is_file():
        return []  # no label file: a background image, as an empty one
    rows: list[tuple[float, ...]] = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split()
        try:
            values = tuple(float(v) for v in fields)
        except ValueError:
            values = ()
        if len(values) != 5 or values[0] != int(values[0]):
            raise ValueError(f"{path}:{lineno}: expected 'class cx cy w h', got {line.strip()!r}")
        if not 0 <= values[0] < num_classes:
            raise ValueError(f"{path}:{lineno}: class id {int(values[0])} is out of range: the data names "
                             f"{num_classes} classes (0..{num_classes - 1})")  # fmt: skip
        rows.append(values)
    return rows


def read_detection_source(data: str | os.PathLike[str], split: str = "train",
                          images: str | os.PathLike[str] | None = None) -> DetectionSource:  # fmt: skip
    """A COCO JSON (``.json``) or a YOLO ``data.yaml`` (``.yaml``/``.yml``), by its suffix."""
    path = Path(data)
    if path.suffix.lower() == ".json":
        return read_coco(path, images)
    if path.suffix.lower() in (".yaml", ".yml"):
        return read_yolo(path, split)
    raise ValueError(f"--data {data}: expected 'digits', a COCO instances .json or a YOLO data.yaml")


# -- the data set ----------------------------------------------------------------------------------
def target_rows(boxes: Tensor, labels: Tensor) -> Tensor:
    """``(K, 5)`` rows ``label, x1, y1, x2, y2``: one image's target as the data sets return it."""
    return torch.cat([labels.float().reshape(-1, 1), boxes.float().reshape(-1, 4)], dim=1)


class DetectionImages(Dataset):
    """Records decoded with Pillow (EXIF applied) and letterboxed to ``size``.

    Items are ``(uint8 (3, size, size), float (K, 5) rows label, x1, y1, x2, y2 in input pixels)``.
    """

    def __init__(self, source: DetectionSource, size: int, classes: Sequence[str] | None = None) -> None:
        self.records, self.size = source.records, size
        self.classes = list(classes) if classes is not None else list(source.classes)
        if len(source.classes) > len(self.classes) or source.classes != self.classes[: len(source.classes)]:
            raise ValueError(f"{source.origin}: its classes {source.classes[:5]} differ from the training data's "
                             f"{self.classes[:5]}")  # fmt: skip

    def __len__(self) -> int:
        return len(self.records)

    def letterbox(self, i: int) -> Letterbox:
        r = self.records[i]
        return Letterbox.fit(r.width, r.height, self.size)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        record = self.records[i]
        image, lb = letterbox_image(open_image(record.path), self.size)
        boxes = record.boxes
        if (lb.width, lb.height) != (record.width, record.height):  # the annotation's size is not the file's
            sx, sy = lb.width / record.width, lb.height / record.height
            boxes = boxes * torch.tensor([sx, sy, sx, sy])
        return image, target_rows(lb.to_input(boxes), record.labels)


def collate_detection(batch: Sequence[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """Stack images; concatenate targets as ``(M, 6)`` rows ``image index, label, x1, y1, x2, y2``."""
    images = torch.stack([image for image, _ in batch])
    rows = [torch.cat([torch.full((len(t), 1), float(i)), t], dim=1) for i, (_, t) in enumerate(batch)]
    return images, torch.cat(rows) if rows else torch.zeros(0, 6)
