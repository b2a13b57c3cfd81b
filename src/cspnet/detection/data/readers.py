"""The two box formats users have, read into one record per image, and the data set that decodes them.

* **COCO**: an instances JSON (``images``, ``annotations`` with ``bbox = [x, y, w, h]`` in pixels,
  ``categories``) and its image folder (by default the JSON's own folder, or ``images/`` beside it).
  Category ids may be anything; classes are the categories sorted by id. Crowd annotations
  (``iscrowd: 1``) are not trained on.
* **YOLO**: a ``data.yaml`` (``path``, ``train``, ``val``, ``names``) whose image folders have
  label folders beside them (``.../images/x.jpg`` -> ``.../labels/x.txt``), one ``class cx cy w h``
  line per box, normalised to the image. An empty or absent label file is a background image.

Both give boxes ``x1, y1, x2, y2`` in pixels of the image as it is displayed (EXIF orientation
applied), so the same boxes in either format read into identical targets. Images are read by the
one image reader of every task (:func:`cspnet.data.decode_image`: 16-bit and float images scaled,
decompression bombs refused).

What the readers trust, and what they do not:

* Errors (``ValueError`` naming the file, and the line or the ids): a file that does not parse, is
  not UTF-8 (a byte-order mark at its start is accepted: editors on Windows write one) or is larger
  than :data:`MAX_TEXT_BYTES` / :data:`MAX_JSON_BYTES`; YAML aliases (``*name``: a few hundred
  bytes of nested aliases expand to gigabytes) and repeated keys; an id, class or coordinate of the
  wrong type (``1.9`` or ``true`` for an integer, ``true`` for a number: never coerced), a
  coordinate that is NaN or infinite, a class id out of range; duplicate COCO image or category
  ids; an annotation naming an image or category that is not there; ``nc`` that contradicts
  ``names``; class names that are not names (lists, ``null``, YAML's ``no``/``yes`` booleans).
* One counted warning per source: boxes outside their image (clipped) or narrower than a pixel
  (dropped); COCO ``width``/``height`` that disagree with the image file (the file's size is used);
  images whose header cannot be read (skipped, as a classification folder skips them); YOLO label
  files without an image.
* An image that fails to decode later (a truncated JPEG passes the header check) is skipped by
  :class:`DetectionImages` as a classification folder skips it: replaced by the next decodable image,
  named in a warning with a running count.
* Zero boxes are legal in a source (a validation set of background images), not for training:
  :func:`require_boxes` is the check the training pipeline makes on its training source.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import reprlib
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import torch
from torch import Tensor
from torch.utils.data import Dataset

from cspnet.data.folder import IMAGE_EXTENSIONS, decode_image, decode_or_skip, first_decodable, image_size
from cspnet.detection.data.boxes import BoxHygiene, Letterbox, clean_boxes, letterbox_image

MAX_TEXT_BYTES = 16 * 2**20
"""The largest ``data.yaml``, label file or image list read (a label file of 16 MiB holds ~400,000 boxes)."""
MAX_JSON_BYTES = 4 * 2**30
"""The largest COCO instances file read (COCO's train2017 file is 448 MB; parsing takes ~10x its size)."""
MAX_CLASSES = 100_000
"""The most classes ``nc`` may declare (class names are made for each)."""
_INT64 = 2**63
_REPR = reprlib.Repr()  # values quoted in messages, shortened: a malformed entry may be megabytes
_REPR.maxstring, _REPR.maxother, _REPR.maxlist, _REPR.maxdict, _REPR.maxlevel = 40, 40, 4, 4, 2
_short = _REPR.repr
_LINE_BREAKS = {ord(c): repr(c)[1:-1] for c in "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"}  # str.splitlines' breaks
P = ParamSpec("P")
R = TypeVar("R")


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
    looked_in: str = ""  # where the boxes were looked for, for "no boxes" messages
    category_ids: list[int] | None = None  # COCO: the category id of each class (results.json names them)

    @property
    def box_count(self) -> int:
        return sum(len(r.boxes) for r in self.records)


open_image = decode_image  # the one image reader; the name detection's callers know it by


def one_line_errors(read: Callable[P, R]) -> Callable[P, R]:
    """``read`` with its ``ValueError``/``OSError`` messages kept on one line: a path or a name from
    the data (a file called ``a\\nb.png``, a ``train`` entry with a line break) is escaped.

    >>> def read():
    ...     raise ValueError("cannot read image data/a\\nb.png")
    >>> one_line_errors(read)()
    Traceback (most recent call last):
    ...
    ValueError: cannot read image data/a\\nb.png
    """

    @functools.wraps(read)
    def checked(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return read(*args, **kwargs)
        except (ValueError, OSError) as exc:
            message = str(exc)
            if len(message.splitlines()) <= 1:
                raise
            one_line = message.translate(_LINE_BREAKS)
            raise (type(exc)(one_line) if isinstance(exc, OSError) else ValueError(one_line)) from exc

    return checked


@one_line_errors
def require_boxes(source: DetectionSource) -> DetectionSource:
    """``source`` unchanged when it has at least one box, else ``ValueError``: nothing to train on.

    The training pipeline calls it on its training source (a validation source may be all
    background). The message says where the boxes were looked for.

    >>> source = DetectionSource([], ["cat"], "data.yaml (train)", "labels/train (no such folder)")
    >>> require_boxes(source)
    Traceback (most recent call last):
    ...
    ValueError: data.yaml (train): no boxes to train on in its 0 image(s) (looked in labels/train (no such folder))
    """
    if source.box_count == 0:
        raise ValueError(f"{source.origin}: no boxes to train on in its {len(source.records)} image(s) "
                         f"(looked in {source.looked_in or source.origin})")  # fmt: skip
    return source


def read_data_file(path: Path, what: str, limit: int | None = None) -> str:
    """The text of a data file: UTF-8 (a BOM at its start accepted), at most ``limit`` bytes
    (default :data:`MAX_TEXT_BYTES`).

    ``FileNotFoundError`` when it is missing; ``ValueError`` naming the file (and for bad UTF-8 the
    line) when it is not a regular file, too large or not UTF-8.
    """
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path}")
    if not path.is_file():
        raise ValueError(f"{what} {path} is not a file")
    limit = MAX_TEXT_BYTES if limit is None else limit
    try:
        size = path.stat().st_size
        if size > limit:
            raise ValueError(f"{path}: {size:,} bytes is more than a {what} may have ({limit:,})")
        with open(path, "rb") as f:
            raw = f.read(limit + 1)  # a file that grew since stat is still bounded
    except OSError as exc:
        raise type(exc)(f"cannot read {what} {path}: {exc.strerror or exc}") from exc
    if len(raw) > limit:
        raise ValueError(f"{path}: more than {limit:,} bytes, more than a {what} may have")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ValueError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start})") from exc


def _integer(value: Any) -> int | None:
    """``value`` as an integer id when it is one (an int, or a float with no fraction), else ``None``.

    ``True`` is no id and ``1.9`` is not ``1``: neither is coerced.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and -_INT64 <= value < _INT64:
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer() and -_INT64 <= value < _INT64:
        return int(value)
    return None


def _finite_number(value: Any) -> float | None:
    """``value`` as a finite float when it is a number (not a bool, not NaN or infinite), else ``None``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # an integer beyond a float's range
        return None
    return number if math.isfinite(number) else None


def _warn(message: str) -> None:
    warnings.warn(message, stacklevel=3)


@dataclass
class _Tally:
    """Counts one kind of problem over a source, for one warning with the first examples."""

    count: int = 0
    examples: list[str] = field(default_factory=list)

    def note(self, example: str) -> None:
        self.count += 1
        if len(self.examples) < 3:
            self.examples.append(example)

    def warn(self, origin: str, what: str) -> None:
        if self.count:
            _warn(f"{origin}: {self.count} {what}; first: {', '.join(self.examples)}")


def _probe(image: Path, unreadable: _Tally) -> tuple[int, int] | None:
    """The displayed size of ``image``, or ``None`` (counted) when its header cannot be read."""
    try:
        return image_size(image)
    except ValueError as exc:
        unreadable.note(f"{image.name} ({str(exc).removeprefix(f'cannot read image {image}: ')[:80]})")
        return None


def _check_some_readable(origin: str, records: list[ImageRecord], unreadable: _Tally) -> None:
    if unreadable.count and not records:
        raise ValueError(f"{origin}: none of its {unreadable.count} images can be read "
                         f"(first: {', '.join(unreadable.examples)})")  # fmt: skip
    unreadable.warn(origin, "unreadable image(s) skipped, with their boxes")


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
    text = read_data_file(path, "COCO annotation file", MAX_JSON_BYTES)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from exc
    except RecursionError as exc:
        raise ValueError(f"{path}: not a COCO instances file (nested too deeply)") from exc
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "annotations", "categories")):
        raise ValueError(f"{path}: not a COCO instances file (expected lists 'images', 'annotations' and 'categories')")
    return data


def _duplicates(pairs: list[tuple[int, str]]) -> dict[int, list[str]]:
    """Ids that occur more than once, with what each occurrence names."""
    counts = Counter(i for i, _ in pairs)
    named: dict[int, list[str]] = {}
    for i, name in pairs:
        if counts[i] > 1:
            named.setdefault(i, []).append(name)
    return named


def _refuse_duplicates(path: Path, pairs: list[tuple[int, str]], what: str, why: str) -> None:
    named = _duplicates(pairs)
    if named:
        shown = "; ".join(f"id {i}: {', '.join(map(repr, names[:3]))}" for i, names in list(named.items())[:3])
        raise ValueError(f"{path}: {len(named)} duplicate {what} id(s) ({shown}): {why}")


def _coco_categories(path: Path, data: dict[str, Any]) -> list[tuple[int, str]]:
    """``(id, name)`` per category, sorted by id; ids unique, names text."""
    categories = []
    for c in data["categories"]:
        cid = _integer(c.get("id")) if isinstance(c, dict) else None
        name = c.get("name") if isinstance(c, dict) else None
        if cid is None or not isinstance(name, str) or not name:
            raise ValueError(f"{path}: malformed category {_short(c)} (expected {{'id': integer, 'name': text}})")
        categories.append((cid, name))
    if not categories:
        raise ValueError(f"{path}: 'categories' is empty: a detector needs at least one class")
    _refuse_duplicates(path, categories, "category", "each would be a class of its own, and labels would shift")
    return sorted(categories)


def _coco_images(path: Path, data: dict[str, Any]) -> list[tuple[int, str, Any, Any]]:
    """``(id, file_name, width, height)`` per image (the sizes as the JSON has them); ids unique."""
    entries = []
    for im in data["images"]:
        image_id = _integer(im.get("id")) if isinstance(im, dict) else None
        file_name = im.get("file_name") if isinstance(im, dict) else None
        if image_id is None or not isinstance(file_name, str) or not file_name:
            raise ValueError(f"{path}: malformed image entry {_short(im)} (expected {{'id': integer, 'file_name': text}})")
        entries.append((image_id, file_name, im.get("width"), im.get("height")))
    if not entries:
        raise ValueError(f"{path}: 'images' is empty")
    _refuse_duplicates(path, [(i, f) for i, f, *_ in entries], "image", "their boxes could not be told apart")
    return entries


def _coco_annotation(path: Path, n: int, ann: Any, image_ids: set[int], index_of: dict[int, int],
                     ) -> tuple[int, int, list[float], bool]:  # fmt: skip
    """``(image_id, class index, [x, y, w, h], crowd)`` of annotation ``n``, every field checked."""
    if not isinstance(ann, dict):
        raise ValueError(f"{path}: annotation #{n} is {_short(ann)}: expected an object")
    name = f"annotation {_short(ann['id'])} (#{n})" if "id" in ann else f"annotation #{n}"
    image_id, category, bbox, crowd = _integer(ann.get("image_id")), _integer(ann.get("category_id")), ann.get("bbox"), ann.get("iscrowd", 0)
    if image_id is None:
        raise ValueError(f"{path}: {name} has image_id {_short(ann.get('image_id'))}: expected an integer id")
    if category is None:
        raise ValueError(f"{path}: {name} has category_id {_short(ann.get('category_id'))}: expected an integer id")
    if image_id not in image_ids:
        raise ValueError(f"{path}: {name} names image_id {image_id}, which is not in 'images'")
    if category not in index_of:
        raise ValueError(f"{path}: {name} has category_id {category}, which is not in "
                         f"'categories' (ids {', '.join(str(c) for c in list(index_of)[:10])})")  # fmt: skip
    numbers = [_finite_number(v) for v in bbox] if isinstance(bbox, list) and len(bbox) == 4 else None
    if numbers is None or any(v is None for v in numbers):
        raise ValueError(f"{path}: {name} has bbox {_short(bbox)}: expected [x, y, w, h], four finite numbers")
    if not (isinstance(crowd, bool) or (isinstance(crowd, int) and crowd in (0, 1))):
        raise ValueError(f"{path}: {name} has iscrowd {_short(crowd)}: expected 0 or 1")
    return image_id, index_of[category], [float(v) for v in numbers if v is not None], bool(crowd)


def _coco_boxes(path: Path, data: dict[str, Any], image_ids: set[int], index_of: dict[int, int],
                ) -> tuple[dict[int, list[list[float]]], dict[int, list[int]], int]:  # fmt: skip
    """xyxy boxes and class indices per image id (crowd annotations left out), and the crowd count."""
    boxes: dict[int, list[list[float]]] = {image_id: [] for image_id in image_ids}
    labels: dict[int, list[int]] = {image_id: [] for image_id in image_ids}
    crowds = 0
    for n, ann in enumerate(data["annotations"]):
        image_id, label, (x, y, w, h), crowd = _coco_annotation(path, n, ann, image_ids, index_of)
        if crowd:
            crowds += 1
            continue
        boxes[image_id].append([x, y, x + w, y + h])
        labels[image_id].append(label)
    return boxes, labels, crowds


@one_line_errors
def read_coco(path: str | os.PathLike[str], images: str | os.PathLike[str] | None = None) -> DetectionSource:
    """An instances JSON and its images (``images`` folder, else found beside the JSON)."""
    path = Path(path)
    data = _load_coco_json(path)
    categories = _coco_categories(path, data)
    index_of = {cid: i for i, (cid, _) in enumerate(categories)}
    entries = _coco_images(path, data)
    folder = _coco_image_folder(path, images, entries[0][1])
    boxes, labels, crowds = _coco_boxes(path, data, {image_id for image_id, *_ in entries}, index_of)
    hygiene, unreadable, resized = BoxHygiene(), _Tally(), _Tally()
    records = []
    for image_id, file_name, json_width, json_height in entries:
        image_path = folder / file_name
        if not image_path.is_file():
            raise ValueError(f"{path}: image {file_name!r} (id {image_id}) is not in {folder}")
        size = _probe(image_path, unreadable)
        if size is None:
            continue
        width, height = size
        if (json_width, json_height) != (None, None) and (json_width, json_height) != size:
            resized.note(f"id {image_id} {file_name!r} {_short(json_width)}x{_short(json_height)} is {width}x{height}")
        kept, kept_labels, clipped, dropped = clean_boxes(
            torch.tensor(boxes[image_id], dtype=torch.float64).reshape(-1, 4),
            torch.tensor(labels[image_id], dtype=torch.long), width, height,
        )  # fmt: skip
        hygiene.note(file_name, clipped, dropped)
        records.append(ImageRecord(image_path, width, height, kept, kept_labels, image_id))
    _check_some_readable(str(path), records, unreadable)
    resized.warn(str(path), "image(s) whose 'width'/'height' disagree with the file (the file's size is used)")
    message = hygiene.message(str(path))
    if message:
        _warn(message)
    looked_in = f"the 'annotations' of {path}: {len(data['annotations'])} annotation(s), {crowds} of them crowd"
    return DetectionSource(records, [name for _, name in categories], str(path), looked_in, [cid for cid, _ in categories])


# -- YOLO ------------------------------------------------------------------------------------------
def _safe_yaml_loader() -> type:
    """PyYAML's safe loader, refusing aliases (a 'billion laughs' expands a few hundred bytes to
    gigabytes) and repeated keys (the last would silently win)."""
    import yaml  # type: ignore[import-untyped]

    class DataFileLoader(yaml.SafeLoader):
        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                raise yaml.composer.ComposerError(None, None, f"aliases (*{event.anchor}) are not allowed in a data file",
                                                  event.start_mark)  # fmt: skip
            return super().compose_node(parent, index)

        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            seen: set[Any] = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                if isinstance(key, str | int | float | bool) and key in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"key {key!r} appears twice", key_node.start_mark)
                if isinstance(key, str | int | float | bool):
                    seen.add(key)
            return super().construct_mapping(node, deep)

    return DataFileLoader


@one_line_errors
def load_data_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A YOLO ``data.yaml`` as a mapping: bounded in size, no aliases; ``ValueError`` naming the file."""
    import yaml

    path = Path(path)
    text = read_data_file(path, "YOLO data file")
    try:
        data = yaml.load(text, Loader=_safe_yaml_loader())  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f":{mark.line + 1}" if mark is not None else ""
        raise ValueError(f"{path}{where}: not valid YAML ({exc.problem or exc.context})") from exc
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from exc
    except RecursionError as exc:
        raise ValueError(f"{path}: not valid YAML (nested too deeply)") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping with 'train', 'val' and 'names'")
    return data


def _class_name(yaml_path: Path, value: Any, where: str) -> str:
    # A bool is YAML's reading of no/yes/on/off: the class was meant to be called that, quoted.
    if isinstance(value, bool) or not isinstance(value, str | int) or not str(value).strip():
        raise ValueError(f"{yaml_path}: class name {_short(value)} ({where}) is not a name: expected text "
                         "(quote names YAML reads otherwise, e.g. 'no', 'yes', 'null')")  # fmt: skip
    return str(value)


def _yolo_names(yaml_path: Path, data: dict[str, Any]) -> list[str]:
    names, nc = data.get("names"), _integer(data.get("nc"))
    if "nc" in data and (nc is None or not 0 < nc <= MAX_CLASSES):
        raise ValueError(f"{yaml_path}: nc {_short(data['nc'])} is invalid: expected the number of classes, 1..{MAX_CLASSES}")
    if isinstance(names, dict):
        ids = [_integer(k) for k in names]
        if any(k is None for k in ids) or sorted(k for k in ids if k is not None) != list(range(len(names))):
            raise ValueError(f"{yaml_path}: 'names' keys must be the class ids 0..{len(names) - 1}, "
                             f"got {_short(list(names))}")  # fmt: skip
        names = [names[k] for k in sorted(names, key=lambda k: _integer(k) or 0)]
    if isinstance(names, list) and names:
        classes = [_class_name(yaml_path, n, f"class {i}") for i, n in enumerate(names)]
        if nc is not None and nc != len(classes):
            raise ValueError(f"{yaml_path}: nc {nc} contradicts 'names', which names {len(classes)} classes")
        return classes
    if names is not None and names != [] and names != {}:
        raise ValueError(f"{yaml_path}: 'names' is {_short(names)}: expected a list of names, or a dict of id: name")
    if nc is not None:
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


def _yolo_places(yaml_path: Path, data: dict[str, Any], split: str) -> tuple[Path, list[Path]]:
    """The data root (``path``) and the image folders / list files of ``split``, resolved against it."""
    root, entry = data.get("path") or ".", data.get(split)
    if not isinstance(root, str):
        raise ValueError(f"{yaml_path}: 'path' is {_short(root)}: expected a folder")
    if entry is None:
        raise ValueError(f"{yaml_path}: no '{split}' entry (the folder of the {split} images)")
    entries = entry if isinstance(entry, list) else [entry]
    if not entries or not all(isinstance(e, str) and e for e in entries):
        raise ValueError(f"{yaml_path}: '{split}' is {_short(entry)}: expected a folder, an image list (.txt) or a list of them")
    base = Path(root) if Path(root).is_absolute() else yaml_path.parent / root
    return base, [Path(e) if Path(e).is_absolute() else base / e for e in entries]


def _yolo_images(root: Path, places: list[Path], yaml_path: Path, split: str) -> list[Path]:
    found: list[Path] = []
    for place in places:
        if place.is_dir():
            found += sorted(p for p in place.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        elif place.is_file() and place.suffix == ".txt":  # a list of image paths, one per line
            for line in read_data_file(place, "image list").split("\n"):
                if line.strip():
                    image = Path(line.strip())
                    found.append(image if image.is_absolute() else root / image)
        else:
            raise FileNotFoundError(f"{yaml_path}: {split} images not found at {place}")
    return found


_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)


def _label_row(path: Path, lineno: int, line: str, num_classes: int) -> tuple[int, float, float, float, float]:
    fields = line.split()
    if len(fields) != 5:
        raise ValueError(f"{path}:{lineno}: expected 'class cx cy w h', got {_short(line.strip())}")
    for text in fields:
        if not _NUMBER.fullmatch(text):
            what = "not a finite number" if text.lower().lstrip("+-") in ("nan", "inf", "infinity") else "not a number"
            raise ValueError(f"{path}:{lineno}: {_short(text)} is {what} (expected 'class cx cy w h')")
    values = [float(f) for f in fields]
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"{path}:{lineno}: {_short(line.strip())} has a value too large to be a finite number")
    if not values[0].is_integer():
        raise ValueError(f"{path}:{lineno}: class {fields[0]} is not an integer class id")
    if not 0 <= values[0] < num_classes:
        raise ValueError(f"{path}:{lineno}: class id {int(values[0])} is out of range: the data names "
                         f"{num_classes} classes (0..{num_classes - 1})")  # fmt: skip
    return int(values[0]), values[1], values[2], values[3], values[4]


def _read_label_file(path: Path, num_classes: int) -> list[tuple[int, float, float, float, float]]:
    """The rows of one label file; no file is a background image, as an empty one."""
    if not path.exists():
        return []
    text = read_data_file(path, "label file")
    # Lines end at "\n" only (str.splitlines would also break at form feeds and other separators,
    # and the line numbers in messages would not be an editor's).
    return [_label_row(path, n, line, num_classes) for n, line in enumerate(text.split("\n"), 1) if line.strip()]


def _label_folders(places: list[Path]) -> list[Path]:
    """Where the label files of image folders ``places`` are (list files have none of their own)."""
    return [_label_path(place / "x.jpg").parent for place in places if place.is_dir()]


def _orphan_labels(folders: list[Path], used: set[Path]) -> list[Path]:
    """Label files under ``folders`` that belong to no image (``classes.txt``: labelImg's class list)."""
    return sorted({p for folder in folders if folder.is_dir() for p in folder.rglob("*.txt")
                   if p not in used and p.name != "classes.txt" and p.is_file()})  # fmt: skip


def _yolo_record(image: Path, image_id: int, classes: list[str], hygiene: BoxHygiene,
                 unreadable: _Tally) -> ImageRecord | None:  # fmt: skip
    size = _probe(image, unreadable)
    if size is None:
        return None
    width, height = size
    rows = _read_label_file(_label_path(image), len(classes))
    labels = torch.tensor([r[0] for r in rows], dtype=torch.long)
    norm = torch.tensor([r[1:] for r in rows], dtype=torch.float64).reshape(-1, 4)
    cx, cy, w, h = norm.unbind(1)
    boxes = torch.stack([(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height], 1)
    kept, kept_labels, clipped, dropped = clean_boxes(boxes, labels, width, height)
    hygiene.note(image.name, clipped, dropped)
    return ImageRecord(image, width, height, kept, kept_labels, image_id)


@one_line_errors
def read_yolo(path: str | os.PathLike[str], split: str = "train") -> DetectionSource:
    """The ``split`` (``train``/``val``/``test``) of a YOLO ``data.yaml``."""
    path = Path(path)
    data = load_data_yaml(path)
    classes = _yolo_names(path, data)
    root, places = _yolo_places(path, data, split)
    origin = f"{path} ({split})"
    hygiene, unreadable = BoxHygiene(), _Tally()
    records = []
    images = _yolo_images(root, places, path, split)
    for image_id, image in enumerate(images):
        if not image.is_file():
            raise ValueError(f"{path}: {split} image {image} not found")
        record = _yolo_record(image, image_id, classes, hygiene, unreadable)
        if record is not None:
            records.append(record)
    if not images:
        raise ValueError(f"{path}: the {split} split has no images (looked in {', '.join(map(str, places))})")
    _check_some_readable(origin, records, unreadable)
    message = hygiene.message(origin)
    if message:
        _warn(message)
    folders = _label_folders(places)
    orphans = _orphan_labels(folders, {_label_path(image) for image in images})
    if orphans:
        _warn(f"{origin}: {len(orphans)} label file(s) with no image, not used; first: "
              f"{', '.join(str(p) for p in orphans[:3])}")  # fmt: skip
    looked_in = ", ".join(f"{f}" + ("" if f.is_dir() else " (no such folder)") for f in folders[:3])
    return DetectionSource(records, classes, origin, looked_in or "the label files of the listed images")


@one_line_errors
def read_detection_source(data: str | os.PathLike[str], split: str = "train",
                          images: str | os.PathLike[str] | None = None) -> DetectionSource:  # fmt: skip
    """A COCO JSON (``.json``) or a YOLO ``data.yaml`` (``.yaml``/``.yml``), by its suffix.

    The ``train`` split must have boxes (:func:`require_boxes`): training on none is an error.
    """
    path = Path(data)
    if path.suffix.lower() == ".json":
        source = read_coco(path, images)
    elif path.suffix.lower() in (".yaml", ".yml"):
        source = read_yolo(path, split)
    else:
        raise ValueError(f"--data {data}: expected 'digits', a COCO instances .json or a YOLO data.yaml")
    return require_boxes(source) if split == "train" else source


# -- the data set ----------------------------------------------------------------------------------
def target_rows(boxes: Tensor, labels: Tensor) -> Tensor:
    """``(K, 5)`` rows ``label, x1, y1, x2, y2``: one image's target as the data sets return it."""
    return torch.cat([labels.float().reshape(-1, 1), boxes.float().reshape(-1, 4)], dim=1)


class DetectionImages(Dataset):
    """Records decoded by the one image reader (:func:`cspnet.data.decode_image`) and letterboxed to ``size``.

    Items are ``(uint8 (3, size, size), float (K, 5) rows label, x1, y1, x2, y2 in input pixels)``.
    An image that cannot be decoded is replaced by the next one that can and named in a warning
    with a running count, as a classification folder does (``undecodable``: path -> why);
    :meth:`load` returns ``None`` for it instead (for evaluation, which leaves it out).
    ``category_ids``: the COCO category id of each class when the source has them (else ``None``).
    """

    def __init__(self, source: DetectionSource, size: int, classes: Sequence[str] | None = None) -> None:
        self.records, self.size, self.origin = source.records, size, source.origin
        self.classes = list(classes) if classes is not None else list(source.classes)
        if len(source.classes) > len(self.classes) or source.classes != self.classes[: len(source.classes)]:
            raise ValueError(f"{source.origin}: its classes {source.classes[:5]} differ from the training data's "
                             f"{self.classes[:5]}")  # fmt: skip
        self.undecodable: dict[Path, str] = {}  # filled lazily, per process
        same = source.category_ids is not None and len(source.category_ids) == len(self.classes)
        self.category_ids = list(source.category_ids) if same and source.category_ids is not None else None

    def __len__(self) -> int:
        return len(self.records)

    def letterbox(self, i: int) -> Letterbox:
        r = self.records[i]
        return Letterbox.fit(r.width, r.height, self.size)

    def load(self, i: int) -> tuple[Tensor, Tensor] | None:
        """Item ``i``, or ``None`` when its image cannot be decoded (remembered, warned about once)."""
        record = self.records[i]
        decoded = decode_or_skip(record.path, decode_image, self.undecodable)
        if decoded is None:
            return None
        image, lb = letterbox_image(decoded, self.size)
        boxes = record.boxes
        if (lb.width, lb.height) != (record.width, record.height):  # the file changed since it was read
            sx, sy = lb.width / record.width, lb.height / record.height
            boxes = boxes * torch.tensor([sx, sy, sx, sy])
        return image, target_rows(lb.to_input(boxes), record.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return first_decodable(self.load, len(self), i, self.origin)


def collate_detection(batch: Sequence[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """Stack images; concatenate targets as ``(M, 6)`` rows ``image index, label, x1, y1, x2, y2``."""
    images = torch.stack([image for image, _ in batch])
    rows = [torch.cat([torch.full((len(t), 1), float(i)), t], dim=1) for i, (_, t) in enumerate(batch)]
    return images, torch.cat(rows) if rows else torch.zeros(0, 6)
