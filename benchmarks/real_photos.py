"""Detection data sets in YOLO layout, written from images that installed packages ship (nothing else is downloaded).

The real-photo set: real objects cut out of real photographs, pasted at random sizes and places onto
other real photographs, with their true boxes. Three classes:

* ``coin``: the 24 ancient coins of scikit-image's ``coins`` photograph, each cut out along its outline
  (background-subtracted threshold, holes filled, opened with a 6 px disk); 17 coins for training,
  7 others for validation, so validation measures coins the detector has never seen;
* ``face``: the 100 face photographs of scikit-image's ``lfw_subset`` (Labeled Faces in the Wild,
  25x25 grey crops around a face), 75 people for training and 25 others for validation;
* ``cat``: the cat of scikit-image's ``chelsea`` photograph, cut out with an ellipse around its head
  (one animal: the detector learns it under changes of size, mirror and light).

Each pasted object is mirrored at random, scaled to a long side of 14-64 px (the cat 24-96 px) and
changed in contrast (x0.75-1.25) and brightness (+-20 of 255); its alpha mask is softened by half a
pixel. Its box is tight around the mask's pixels above one half, so every box frames what was pasted.
Objects do not overlap (2 px apart). Half of the images also get one or two *distractors*: the 100
non-face patches of ``lfw_subset`` (grey photo patches that are no face), pasted like objects but
without a box, so that "a grey square" is not yet "a face".

Backgrounds are random crops (40-100 % of the shorter side, any place) of eleven photographs:
scikit-learn's ``china`` and ``flower`` sample images and scikit-image's ``rocket``, ``motorcycle_left``,
``coffee``, ``grass``, ``gravel``, ``brick``, ``hubble_deep_field``, ``moon`` and ``ihc`` (no photograph
that shows a face, a cat or a coin), resized to an image of 160-256 px a side (aspect 3:4 to 4:3).
Each image has 1-6 objects of random classes. 200 training and 50 validation images by default,
all drawn from ``--seed`` (0): the same files on every machine. Written as JPEG (quality 92), labels
``class cx cy w h`` normalised, ``data.yaml`` and ``dataset.json`` (the counts and the sources).

scikit-image is not a dependency of cspnet: its images are read from an importable ``skimage`` if
there is one, else from its wheel (pinned: ``SKIMAGE_WHEEL``), fetched once with ``pip download`` into
``~/.cache/cspnet/wheels`` and read as a zip archive (nothing is installed).

The dense set (``--dense``), shaped like a user's counting problem: one class (``coin``), 40 training
tiles of 416x416 with 30-70 coins each (long side 14-40 px, the training coins), and 2 validation
images of 640x480 with about 50 coins each (the 7 other coins, same pixel sizes, so that letterboxed
to 416 they are 0.65 times the training size), on the same backgrounds, no distractors.

The embedded digits (``--digits``): the canvases of ``cspnet detect train --data digits``
(``digits_detection_split``, 2,000 training and 400 validation 64x64 canvases) written as PNG files
with YOLO labels, so that another tool trains on exactly the same images.

    PYTHONPATH=src python benchmarks/real_photos.py --output data/real_photos
    PYTHONPATH=src python benchmarks/real_photos.py --digits --output data/digits_yolo
    PYTHONPATH=src python benchmarks/real_photos.py --dense --output data/dense_coins
    cspnet detect train --data data/real_photos/data.yaml --img-size 256
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ["coin", "face", "cat"]
SKIMAGE_WHEEL = "scikit-image==0.26.0"
SKIMAGE_FILES = ("coins.png", "chelsea.png", "lfw_subset.npy", "rocket.jpg", "motorcycle_left.png", "coffee.png",
                 "grass.png", "gravel.png", "brick.png", "hubble_deep_field.jpg", "moon.png", "ihc.png")  # fmt: skip
BACKGROUNDS = ("china", "flower", "rocket", "motorcycle_left", "coffee", "grass", "gravel", "brick",
               "hubble_deep_field", "moon", "ihc")  # fmt: skip
SIZES = {"coin": (14, 64), "face": (14, 64), "cat": (24, 96)}  # long side of a pasted object, pixels
IMAGE_SIDES = (160, 256)
TRAIN_SHARE = {"coin": 17, "face": 75}  # instances for training; the rest validate
WHEEL_CACHE = Path.home() / ".cache" / "cspnet" / "wheels"


# -- the source photographs ------------------------------------------------------------------------
def _wheel(cache: Path) -> Path:
    found = sorted(cache.glob("scikit_image-0.26.0-*.whl"))
    if not found:
        cache.mkdir(parents=True, exist_ok=True)
        print(f"fetching {SKIMAGE_WHEEL} (its images only are read) into {cache}", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q",
                        SKIMAGE_WHEEL, "-d", str(cache)], check=True)  # fmt: skip
        found = sorted(cache.glob("scikit_image-0.26.0-*.whl"))
    return found[0]


def skimage_files(cache: Path) -> dict[str, bytes]:
    """The bytes of :data:`SKIMAGE_FILES`, from an importable skimage or the pinned wheel."""
    try:
        import skimage  # type: ignore[import-not-found]

        folder = Path(skimage.__file__).parent / "data"
        if all((folder / name).is_file() for name in SKIMAGE_FILES):
            return {name: (folder / name).read_bytes() for name in SKIMAGE_FILES}
    except ImportError:
        pass
    with zipfile.ZipFile(_wheel(cache)) as wheel:
        return {name: wheel.read(f"skimage/data/{name}") for name in SKIMAGE_FILES}


def _rgb(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


@dataclass
class Sources:
    """The photographs: ``backgrounds`` by name, and the raw material of each class."""

    backgrounds: dict[str, np.ndarray]  # (H, W, 3) uint8
    coins: np.ndarray  # (H, W) uint8
    chelsea: np.ndarray  # (H, W, 3) uint8
    faces: np.ndarray  # (100, 25, 25) in [0, 1]
    non_faces: np.ndarray  # (100, 25, 25) in [0, 1]


def load_sources(cache: Path) -> Sources:
    from sklearn.datasets import load_sample_images

    files = skimage_files(cache)
    samples = load_sample_images()
    backgrounds = {Path(f).stem: image for f, image in zip(samples.filenames, samples.images)}
    for name in BACKGROUNDS:
        if name not in backgrounds:
            key = next(f for f in SKIMAGE_FILES if f.startswith(name + "."))
            backgrounds[name] = _rgb(files[key])
    lfw = np.load(io.BytesIO(files["lfw_subset.npy"]))
    coins = np.asarray(Image.open(io.BytesIO(files["coins.png"])).convert("L"))
    return Sources(backgrounds, coins, _rgb(files["chelsea.png"]), lfw[:100], lfw[100:])


# -- cut-outs --------------------------------------------------------------------------------------
@dataclass
class CutOut:
    """An object to paste: its pixels and how much of each pixel is the object (alpha in [0, 1])."""

    rgb: np.ndarray  # (h, w, 3) uint8
    alpha: np.ndarray  # (h, w) float32
    label: int  # index into CLASSES; -1 for a distractor (pasted without a box)


def coin_cutouts(coins: np.ndarray) -> list[CutOut]:
    """Each coin of the ``coins`` photograph along its outline, in reading order (rows of the plate)."""
    from scipy import ndimage as ndi

    grey = coins.astype(np.float64)
    background = ndi.uniform_filter(ndi.grey_opening(grey, size=41), 41)  # the plate's uneven light
    mask = ndi.binary_fill_holes(ndi.gaussian_filter(grey, 1.5) - background > 30)
    r = 6
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    mask = ndi.binary_opening(mask, structure=xx**2 + yy**2 <= r * r)  # cut thin bridges to shadows
    labels, count = ndi.label(mask)
    found = []
    for k, box in enumerate(ndi.find_objects(labels), start=1):
        region = labels[box] == k
        if region.sum() < 1000:  # specks of the plate, not coins
            continue
        rgb = np.repeat(coins[box][..., None], 3, axis=2)
        found.append((box[0].start // 60, box[1].start, CutOut(rgb, region.astype(np.float32), 0)))
    return [c for _, _, c in sorted(found, key=lambda t: (t[0], t[1]))]


def face_cutouts(faces: np.ndarray, label: int = 1) -> list[CutOut]:
    """LFW's 25x25 grey crops as whole rectangles (the crop is the face's box)."""
    out = []
    for face in faces:
        grey = np.round(face * 255).astype(np.uint8)
        out.append(CutOut(np.repeat(grey[..., None], 3, axis=2), np.ones(grey.shape, np.float32), label))
    return out


def cat_cutout(chelsea: np.ndarray) -> CutOut:
    """Chelsea's head: an ellipse centred at (230, 160) with half-axes 190 x 150 px of the 451x300 photograph."""
    h, w = chelsea.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    inside = ((xx - 230) / 190) ** 2 + ((yy - 160) / 150) ** 2 <= 1
    rows, cols = np.nonzero(inside)
    box = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
    return CutOut(chelsea[box], inside[box].astype(np.float32), 2)


@dataclass
class Pools:
    """What one split pastes: objects per class and distractors."""

    objects: dict[int, list[CutOut]]
    distractors: list[CutOut]


def split_pools(sources: Sources, seed: int) -> tuple[Pools, Pools]:
    """Training and validation pools: disjoint coins, faces and distractors; the one cat in both."""
    rng = np.random.default_rng(seed)
    coins = coin_cutouts(sources.coins)
    faces = face_cutouts(sources.faces)
    others = face_cutouts(sources.non_faces, label=-1)
    coin_order, face_order, other_order = (rng.permutation(len(x)) for x in (coins, faces, others))
    cat = [cat_cutout(sources.chelsea)]

    def take(items: list[CutOut], order: np.ndarray, sl: slice) -> list[CutOut]:
        return [items[i] for i in order[sl]]

    n_coin, n_face = TRAIN_SHARE["coin"], TRAIN_SHARE["face"]
    train = Pools({0: take(coins, coin_order, slice(0, n_coin)), 1: take(faces, face_order, slice(0, n_face)), 2: cat},
                  take(others, other_order, slice(0, n_face)))  # fmt: skip
    val = Pools({0: take(coins, coin_order, slice(n_coin, None)), 1: take(faces, face_order, slice(n_face, None)),
                 2: cat}, take(others, other_order, slice(n_face, None)))  # fmt: skip
    return train, val


# -- composing an image ----------------------------------------------------------------------------
def background(photo: np.ndarray, width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """A random crop (40-100 % of the shorter side, the image's aspect) of ``photo``, resized to the image."""
    ph, pw = photo.shape[:2]
    scale = rng.uniform(0.4, 1.0) * min(ph / height, pw / width)
    ch, cw = max(8, int(height * scale)), max(8, int(width * scale))
    y, x = int(rng.integers(0, ph - ch + 1)), int(rng.integers(0, pw - cw + 1))
    crop = Image.fromarray(photo[y : y + ch, x : x + cw])
    return np.asarray(crop.resize((width, height), Image.Resampling.BILINEAR)).astype(np.float32)


def transformed(cut: CutOut, long_side: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The cut-out mirrored at random, resized to ``long_side``, light changed; (rgb float, alpha)."""
    from scipy import ndimage as ndi

    rgb, alpha = cut.rgb, cut.alpha
    if rng.random() < 0.5:
        rgb, alpha = rgb[:, ::-1], alpha[:, ::-1]
    h, w = alpha.shape
    f = long_side / max(h, w)
    size = (max(2, round(w * f)), max(2, round(h * f)))
    method = Image.Resampling.LANCZOS if f < 1 else Image.Resampling.BICUBIC
    out = np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).resize(size, method)).astype(np.float32)
    a = np.asarray(Image.fromarray(np.ascontiguousarray(alpha * 255).astype(np.uint8)).resize(size, Image.Resampling.BILINEAR))
    a = np.clip(ndi.gaussian_filter(a.astype(np.float32) / 255.0, 0.5), 0, 1)
    if cut.alpha.min() == 1.0:  # a rectangular crop stays whole: only its outer pixels are softened
        a = np.ones_like(a)
    contrast, shift = rng.uniform(0.75, 1.25), rng.uniform(-20, 20)
    mean = out.mean()
    return np.clip((out - mean) * contrast + mean + shift, 0, 255), a


def _free(box: tuple[int, int, int, int], placed: list[tuple[int, int, int, int]], margin: int = 2) -> bool:
    x1, y1, x2, y2 = box
    return not any(x1 < b[2] + margin and b[0] < x2 + margin and y1 < b[3] + margin and b[1] < y2 + margin for b in placed)


def paste(canvas: np.ndarray, cut: CutOut, placed: list[tuple[int, int, int, int]], rng: np.random.Generator,
          long_side: int) -> tuple[int, int, int, int] | None:  # fmt: skip
    """Paste ``cut`` at a free random place of ``canvas`` (in place); its tight box, or None when no room."""
    rgb, alpha = transformed(cut, long_side, rng)
    h, w = alpha.shape
    height, width = canvas.shape[:2]
    if h >= height or w >= width:
        return None
    rows, cols = np.nonzero(alpha > 0.5)
    if not len(rows):
        return None
    for _ in range(30):
        x, y = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
        box = (x + int(cols.min()), y + int(rows.min()), x + int(cols.max()) + 1, y + int(rows.max()) + 1)
        if _free(box, placed):
            region = canvas[y : y + h, x : x + w]
            canvas[y : y + h, x : x + w] = region * (1 - alpha[..., None]) + rgb * alpha[..., None]
            placed.append(box)
            return box
    return None


def compose(pools: Pools, backgrounds: Sequence[np.ndarray], rng: np.random.Generator
            ) -> tuple[np.ndarray, list[tuple[int, float, float, float, float]]]:  # fmt: skip
    """One image (uint8 HxWx3) and its boxes ``(class, x1, y1, x2, y2)`` in pixels (pixel edges)."""
    side = int(rng.integers(IMAGE_SIDES[0], IMAGE_SIDES[1] + 1))
    aspect = rng.uniform(0.75, 4 / 3)
    width, height = (side, round(side / aspect)) if aspect >= 1 else (round(side * aspect), side)
    canvas = background(backgrounds[int(rng.integers(len(backgrounds)))], width, height, rng)
    placed: list[tuple[int, int, int, int]] = []
    boxes = []
    for _ in range(int(rng.integers(1, 7))):
        label = int(rng.integers(len(CLASSES)))
        pool = pools.objects[label]
        cut = pool[int(rng.integers(len(pool)))]
        box = paste(canvas, cut, placed, rng, int(rng.integers(*SIZES[CLASSES[label]], endpoint=True)))
        if box is not None:
            boxes.append((label, *map(float, box)))
    if rng.random() < 0.5:
        for _ in range(int(rng.integers(1, 3))):
            cut = pools.distractors[int(rng.integers(len(pools.distractors)))]
            paste(canvas, cut, placed, rng, int(rng.integers(*SIZES["face"], endpoint=True)))
    return np.round(canvas).astype(np.uint8), boxes  # type: ignore[return-value]


# -- writing YOLO ----------------------------------------------------------------------------------
def yolo_line(label: int, box: Sequence[float], width: int, height: int) -> str:
    """``class cx cy w h`` normalised to the image, as YOLO label files hold them; rounded to 6 decimals
    so that a box touching the image's edge does not read as reaching past it.

    >>> yolo_line(2, (10, 20, 30, 60), 100, 200)
    '2 0.200000 0.200000 0.200000 0.200000'
    >>> yolo_line(0, (0, 0, 7, 3), 7, 3)  # the whole image: exactly 1, never 1.0000005
    '0 0.500000 0.500000 1.000000 1.000000'
    >>> yolo_line(0, (2, 0, 3, 3), 3, 3)  # (2/3 + 1) / 2 rounds up: the width shrinks by a millionth
    '0 0.833333 0.500000 0.333333 1.000000'
    """
    x1, y1, x2, y2 = box
    values = []
    for low, high, side in ((x1, x2, width), (y1, y2, height)):
        centre = round((low + high) / 2 / side, 6)
        extent = round((high - low) / side, 6)
        room = 2 * min(centre, 1 - centre)  # the widest box around this centre that stays inside
        values += [centre, min(extent, round(room, 6) if room < extent else extent)]
    cx, w, cy, h = values
    return f"{label} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}"


def write_split(root: Path, split: str, images: list[tuple[np.ndarray, list]], suffix: str = ".jpg") -> int:
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    (root / "labels" / split).mkdir(parents=True, exist_ok=True)
    boxes = 0
    for i, (image, rows) in enumerate(images):
        name = f"{split}_{i:04d}"
        picture = Image.fromarray(image)
        if suffix == ".jpg":
            picture.save(root / "images" / split / f"{name}{suffix}", quality=92)
        else:
            picture.save(root / "images" / split / f"{name}{suffix}")
        h, w = image.shape[:2]
        (root / "labels" / split / f"{name}.txt").write_text("".join(yolo_line(int(r[0]), r[1:], w, h) + "\n" for r in rows))
        boxes += len(rows)
    return boxes


def write_data_yaml(root: Path, names: Sequence[str]) -> Path:
    quoted = ", ".join(f"'{n}'" for n in names)
    # No `path`: the folders are relative to this file, for cspnet and for ultralytics alike (moves with it).
    (root / "data.yaml").write_text(f"train: images/train\nval: images/val\nnames: [{quoted}]\n")
    return root / "data.yaml"


def build_real_photos(out: Path, train: int = 200, val: int = 50, seed: int = 0, cache: Path | None = None,
                      sources: Sources | None = None) -> dict:  # fmt: skip
    """Write the real-photo set into ``out`` (module docstring); returns what ``dataset.json`` records.
    ``sources``: the photographs (default: read from scikit-image and scikit-learn, ``cache`` the wheel's folder)."""
    sources = sources if sources is not None else load_sources(cache or WHEEL_CACHE)
    train_pool, val_pool = split_pools(sources, seed)
    photos = [sources.backgrounds[name] for name in BACKGROUNDS if name in sources.backgrounds]
    summary: dict = {"classes": CLASSES, "seed": seed, "sources": f"{SKIMAGE_WHEEL} data, scikit-learn sample images",
                     "backgrounds": [n for n in BACKGROUNDS if n in sources.backgrounds]}  # fmt: skip
    for split, count, pool, offset in (("train", train, train_pool, 1), ("val", val, val_pool, 2)):
        rng = np.random.default_rng([seed, offset])
        images = [compose(pool, photos, rng) for _ in range(count)]
        per_class = [sum(1 for _, rows in images for r in rows if r[0] == k) for k in range(len(CLASSES))]
        summary[split] = {"images": count, "boxes": write_split(out, split, images),
                          "per_class": dict(zip(CLASSES, per_class)),
                          "instances": {CLASSES[k]: len(v) for k, v in pool.objects.items()}}  # fmt: skip
    write_data_yaml(out, CLASSES)
    (out / "dataset.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


DENSE_TRAIN = (40, (416, 416), (30, 70))  # images, (width, height), objects per image
DENSE_VAL = (2, (640, 480), (45, 55))
DENSE_COIN_SIZES = (14, 40)


def compose_dense(coins: list[CutOut], photo: np.ndarray, size: tuple[int, int], count: int,
                  rng: np.random.Generator) -> tuple[np.ndarray, list[tuple[int, float, float, float, float]]]:  # fmt: skip
    """One image of ``size`` (width, height) with up to ``count`` coins pasted apart; boxes as :func:`compose`'s."""
    width, height = size
    canvas = background(photo, width, height, rng)
    placed: list[tuple[int, int, int, int]] = []
    boxes = []
    for _ in range(count):
        cut = coins[int(rng.integers(len(coins)))]
        box = paste(canvas, cut, placed, rng, int(rng.integers(*DENSE_COIN_SIZES, endpoint=True)))
        if box is not None:
            boxes.append((0, *map(float, box)))
    return np.round(canvas).astype(np.uint8), boxes  # type: ignore[return-value]


def build_dense(out: Path, seed: int = 0, cache: Path | None = None, sources: Sources | None = None) -> dict:
    """Write the dense one-class set into ``out`` (module docstring); returns what ``dataset.json`` records."""
    sources = sources if sources is not None else load_sources(cache or WHEEL_CACHE)
    train_pool, val_pool = split_pools(sources, seed)
    photos = [sources.backgrounds[name] for name in BACKGROUNDS if name in sources.backgrounds]
    summary: dict = {"classes": ["coin"], "seed": seed, "sources": f"{SKIMAGE_WHEEL} coins and backgrounds"}
    for split, (count, size, per_image), pool, offset in (("train", DENSE_TRAIN, train_pool, 3),
                                                          ("val", DENSE_VAL, val_pool, 4)):  # fmt: skip
        rng = np.random.default_rng([seed, offset])
        images = [compose_dense(pool.objects[0], photos[int(rng.integers(len(photos)))], size,
                                int(rng.integers(per_image[0], per_image[1] + 1)), rng) for _ in range(count)]  # fmt: skip
        summary[split] = {"images": count, "size": list(size), "boxes": write_split(out, split, images),
                          "coins": len(pool.objects[0])}  # fmt: skip
    write_data_yaml(out, ["coin"])
    (out / "dataset.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def build_digits(out: Path, train: int | None = None, val: int | None = None) -> dict:
    """The embedded digits canvases (``digits_detection_split``) as a YOLO set of PNG files."""
    from cspnet.detection.data import digits_detection_split
    from cspnet.detection.data.digits import DIGITS_DETECTION_TRAIN, DIGITS_DETECTION_VAL

    train_set, val_set = digits_detection_split(train_images=train or DIGITS_DETECTION_TRAIN,
                                                val_images=val or DIGITS_DETECTION_VAL)  # fmt: skip
    summary: dict = {"classes": train_set.classes, "sources": "cspnet digits_detection_split (scikit-learn digits)"}
    for split, data in (("train", train_set), ("val", val_set)):
        images = [(data.images[i].permute(1, 2, 0).numpy(), data.targets[i].tolist()) for i in range(len(data))]
        summary[split] = {"images": len(images), "boxes": write_split(out, split, images, suffix=".png")}
    write_data_yaml(out, train_set.classes)
    (out / "dataset.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", required=True, type=Path, help="the folder to write (must not exist or be empty)")
    p.add_argument("--digits", action="store_true", help="write the embedded digits canvases instead")
    p.add_argument("--dense", action="store_true", help="write the dense one-class coin set instead")
    p.add_argument("--train", type=int, help="training images (default 200; digits 2000)")
    p.add_argument("--val", type=int, help="validation images (default 50; digits 400)")
    p.add_argument("--seed", type=int, default=0, help="real photos: the seed every draw comes from")
    p.add_argument("--cache", type=Path, default=WHEEL_CACHE, help="where the scikit-image wheel is kept")
    args = p.parse_args(argv)
    if args.output.exists() and any(args.output.iterdir()):
        p.error(f"--output {args.output} is not empty")
    args.output.mkdir(parents=True, exist_ok=True)
    if args.digits:
        summary = build_digits(args.output, args.train, args.val)
    elif args.dense:
        summary = build_dense(args.output, args.seed, args.cache)
    else:
        summary = build_real_photos(args.output, args.train or 200, args.val or 50, args.seed, args.cache)
    print(json.dumps(summary, indent=2))
    print(f"-> {args.output / 'data.yaml'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
