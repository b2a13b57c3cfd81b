"""An ImageFolder-style reader: ``ROOT/<class>/*`` (or ``ROOT/train`` + ``ROOT/val``), decoded with Pillow.

Images are decoded in DataLoader workers, turned upright (EXIF orientation), converted to 8-bit RGB
and resized to a fixed square side so batches stack; random augmentation happens later, on whole
batches (:mod:`cspnet.data.transforms`). Two resizes exist: training images are resized to the
square as a whole (the random resized crop follows), evaluation images by timm's ``crop_pct`` rule
(short side to ``img_size / crop_pct``, centre crop; see :func:`read_image`).

:func:`decode_image` is the one image reader of every task (detection's data sets and
``cspnet detect predict`` use it too): EXIF orientation, 16-bit and float images scaled by their
range, decompression bombs refused, every decoder error a ``ValueError`` naming the file.

Bad files, in two stages (detection's data sets follow the same two, through :func:`image_size`,
:func:`decode_or_skip` and :func:`first_decodable`):

* when the folder is scanned, every file is opened and checked with Pillow's ``verify``; the ones
  that fail are skipped with one warning that counts them, and a folder with nothing readable is an
  error. ``verify`` is cheap (no pixel decoding), which matters for a million-image folder.
* a file that passes ``verify`` can still fail to decode (a truncated or bit-flipped JPEG: ``verify``
  does not decode JPEG data). Decoding is lazy, in the workers, so such a file is found when it is
  first indexed: it is remembered as undecodable, a warning names it with a running count (per
  DataLoader process: workers cannot share a counter cheaply), and the next decodable image of the
  folder is returned in its place, so a training epoch never crashes and batches keep their size.
  ``cspnet eval`` does not substitute: it drops such images and reports how many
  (:meth:`ImageFolder.load` returns ``None``).

A class folder with no readable image is an error when the folder defines the classes (training: it
would silently add a class the model never sees an example of); in a folder read with given classes
(a validation folder) it only means that class has no examples there, which is worth a warning.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from cspnet.data.transforms import DEFAULT_CROP_PCT, resize_size

log = logging.getLogger(__name__)
T = TypeVar("T")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
_ROTATED = (5, 6, 7, 8)  # EXIF orientations that swap width and height


def _to_uint8(array: np.ndarray, mode: str) -> np.ndarray:
    """Map a high-bit-depth or float image's value range onto 0..255 (scaled, never clipped at 255).

    16-bit images (Pillow's ``I;16*``; ``I`` is how Pillow holds 16-bit PNG/TIFF data) use 0..65535;
    float images (``F``) use 0..1 when their values lie there, 0..255 when they lie there, else
    0..65535 or, beyond that, their own min..max. NaN becomes 0.
    """
    data = np.nan_to_num(array.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    if mode == "F":
        low, high = float(data.min(initial=0.0)), float(data.max(initial=0.0))
        if low >= 0 and high <= 1:
            scale = 255.0
        elif low >= 0 and high <= 255:
            scale = 1.0
        elif low >= 0 and high <= 65535:
            scale = 255.0 / 65535.0
        else:
            data, scale = data - low, 255.0 / max(high - low, 1e-12)
    else:  # 16-bit integer data
        data, scale = np.clip(data, 0, 65535), 255.0 / 65535.0
    return np.clip(np.rint(data * scale), 0, 255).astype(np.uint8)


def _rgb(img: Any) -> Any:
    """An 8-bit RGB version of a Pillow image of any mode."""
    from PIL import Image

    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        array = np.asarray(img)
        if array.ndim == 3:  # some plugins give (H, W, 1)
            array = array[..., 0]
        return Image.fromarray(_to_uint8(array, "F" if img.mode == "F" else "I")).convert("RGB")  # 2-d uint8: L
    return img.convert("RGB")


def _resize(img: Any, size: int, crop_pct: float | None) -> Any:
    from PIL import Image

    if crop_pct is None:  # training: the whole image to the square, random crops come later
        return img.resize((size, size), Image.Resampling.BILINEAR)
    short = resize_size(size, crop_pct)
    width, height = img.size
    scale = short / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    img = img.resize((new_w, new_h), Image.Resampling.BILINEAR)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return img.crop((left, top, left + size, top + size))


def decode_image(path: str | os.PathLike[str]) -> Any:
    """Decode ``path`` to an upright 8-bit RGB Pillow image: the one image reader of every task.

    EXIF orientation is applied; 16-bit and float images are scaled to 8 bits by their value range
    (see :func:`_to_uint8`), never saturated. Raises ``ValueError`` naming the file when Pillow
    cannot decode it (whatever its decoders raise), or when it is larger than Pillow's
    decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``).

    >>> import tempfile, numpy as np
    >>> from PIL import Image
    >>> path = tempfile.mktemp(suffix=".png")
    >>> Image.fromarray(np.full((4, 8), 1000, dtype=np.uint16)).save(path)  # 16-bit grey
    >>> image = decode_image(path)
    >>> image.mode, image.size, image.getpixel((0, 0))  # 1000 / 65535 of full scale, not saturated
    ('RGB', (8, 4), (4, 4, 4))
    """
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as img:
            rgb = _rgb(ImageOps.exif_transpose(img))
            rgb.load()  # decode now, inside the try: the file closes when the block ends
            return rgb
    except Exception as exc:
        raise _unreadable(path, exc) from exc


def _unreadable(path: str | os.PathLike[str], exc: Exception) -> ValueError:
    """The one-line error for an image Pillow could not open or decode."""
    from PIL import Image

    if isinstance(exc, Image.DecompressionBombError):
        return ValueError(f"cannot read image {path}: too large to decode safely ({exc})")
    # Pillow's decoders raise more than OSError on damaged files (fuzzing found TypeError from a
    # TIFF tag, SyntaxError, EOFError, struct.error): whatever a file makes them raise, it is a bad file.
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else f"{type(exc).__name__}: {exc}"
    return ValueError(f"cannot read image {path}: {reason}")  # "[Errno 2] ..." would repeat the path


def image_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """``(width, height)`` of ``path`` as displayed (EXIF rotation applied), without decoding JPEG data.

    Raises ``ValueError`` naming the file as :func:`decode_image` does (a decompression bomb
    included), so a data set's scan and its decoding agree on what a bad file is.
    """
    from PIL import Image

    try:
        with Image.open(path) as img:
            width, height = img.size
            orientation = img.getexif().get(0x0112, 1)
    except Exception as exc:
        raise _unreadable(path, exc) from exc
    return (height, width) if orientation in _ROTATED else (width, height)


def read_image(path: str | os.PathLike[str], size: int, crop_pct: float | None = None) -> Tensor:
    """Decode ``path`` (:func:`decode_image`) to a ``(3, size, size)`` uint8 tensor.

    ``crop_pct=None`` resizes the whole image to the square (bilinear); a fraction resizes the short
    side to ``floor(size / crop_pct)`` and keeps the centre square (timm's evaluation transform).
    Raises ``ValueError`` naming the file when it cannot be decoded.

    >>> import tempfile, numpy as np
    >>> from PIL import Image
    >>> path = tempfile.mktemp(suffix=".png")
    >>> Image.fromarray(np.full((4, 8), 1000, dtype=np.uint16)).save(path)  # 16-bit grey
    >>> read_image(path, 2).unique().tolist()  # 1000 / 65535 of full scale, not saturated
    [4]
    """
    image = decode_image(path)
    try:
        array = np.asarray(_resize(image, size, crop_pct), dtype=np.uint8).copy()
    finally:
        image.close()
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def _readable(path: Path) -> bool:
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.verify()
        return True
    except Exception:  # any decoder error (a decompression bomb included) means the file is skipped
        return False


def _class_dirs(root: Path) -> list[Path]:
    if not root.exists():
        raise FileNotFoundError(f"data folder not found: {root}")
    if not root.is_dir():
        raise NotADirectoryError(f"data path is not a folder: {root}")
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


class ImageFolder(Dataset):
    """Images under ``root/<class>/``; items are ``(uint8 (3, size, size), class index)``.

    ``classes`` fixes the class order (a validation folder must use the training folder's);
    by default it is the sorted sub-folder names. ``crop_pct`` selects the resize (see
    :func:`read_image`): ``None`` for training images, a fraction for evaluation.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        size: int,
        classes: Sequence[str] | None = None,
        crop_pct: float | None = None,
    ) -> None:
        self.root = Path(root)
        self.size = size
        self.crop_pct = crop_pct
        found = [d.name for d in _class_dirs(self.root)]
        if not found:
            raise ValueError(f"{self.root} has no class sub-folders (expected {self.root}/<class>/<images>)")
        self.classes = list(classes) if classes is not None else found
        index = {c: i for i, c in enumerate(self.classes)}
        unknown = sorted(set(found) - set(index))
        if unknown:
            raise ValueError(f"{self.root} has classes the training data lacks: {', '.join(unknown[:5])}")
        candidates = [
            (path, index[c])
            for c in found
            for path in sorted((self.root / c).rglob("*"))
            if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS
        ]
        if not candidates:
            raise ValueError(f"{self.root} has no images (extensions: {', '.join(IMAGE_EXTENSIONS)})")
        readable = [_readable(p) for p, _ in candidates]
        self.samples = [s for s, ok in zip(candidates, readable) if ok]
        skipped = len(candidates) - len(self.samples)
        if not self.samples:
            raise ValueError(f"{self.root}: none of its {len(candidates)} images can be read")
        if skipped:
            first = next(p for (p, _), ok in zip(candidates, readable) if not ok)
            warnings.warn(f"{self.root}: skipped {skipped} unreadable image(s), e.g. {first}", stacklevel=2)
        self.targets = [y for _, y in self.samples]
        self._check_empty_classes(found, defines_classes=classes is None)
        self.undecodable: dict[Path, str] = {}  # path -> why; filled lazily, per process

    def _check_empty_classes(self, found: list[str], defines_classes: bool) -> None:
        counts = np.bincount(self.targets, minlength=len(self.classes))
        empty = [c for c in found if counts[self.classes.index(c)] == 0]
        if not empty:
            return
        names = ", ".join(f"{self.root / c}" for c in empty[:5])
        if defines_classes:  # see the module docstring: a silent extra class would be worse
            raise ValueError(f"class folder(s) with no readable image: {names} (remove them or add images)")
        warnings.warn(f"{self.root}: no readable image for class(es) {', '.join(empty[:5])}", stacklevel=3)

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, i: int) -> tuple[Tensor, int] | None:
        """Item ``i``, or ``None`` when its file cannot be decoded (remembered, warned about once)."""
        path, target = self.samples[i]
        image = decode_or_skip(path, lambda p: read_image(p, self.size, self.crop_pct), self.undecodable)
        return None if image is None else (image, target)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return first_decodable(self.load, len(self), i, self.root)


def decode_or_skip(path: Path, decode: Callable[[Path], T], undecodable: dict[Path, str]) -> T | None:
    """``decode(path)``, or ``None`` when it raises ``ValueError``: the file is then remembered in
    ``undecodable`` (path -> why; never decoded again) and named in a warning with a running count.

    The count is per process: DataLoader workers cannot share a counter cheaply. Every data set
    that decodes lazily (classification folders, detection sources) skips a bad file through here.
    """
    if path in undecodable:
        return None
    try:
        return decode(path)
    except ValueError as exc:
        undecodable[path] = str(exc)
        from torch.utils.data import get_worker_info

        where = " in this DataLoader worker" if get_worker_info() is not None else ""
        warnings.warn(f"skipped an undecodable image ({len(undecodable)} so far{where}): {exc}", stacklevel=3)
        return None


def first_decodable(load: Callable[[int], T | None], length: int, i: int, where: object) -> T:
    """Item ``i``, or if it cannot be decoded the next one that can (see the module docstring).

    The substitute depends only on which files decode, never on timing or order of access, so a
    resumed run sees the same batches. ``ValueError`` naming ``where`` when none can be decoded;
    ``IndexError`` past the end (iterating a data set stops there).
    """
    if not -length <= i < length:
        raise IndexError(f"{where}: item {i} of {length}")
    for offset in range(length):
        item = load((i + offset) % length)
        if item is not None:
            return item
    raise ValueError(f"{where}: none of its {length} images can be decoded")


def split_indices(targets: Sequence[int], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """A seeded, per-class (stratified) split: the same files land in val on every run and machine.

    Returns sorted training and validation indices; a class with one item keeps it in training.

    >>> split_indices([0, 0, 0, 0, 1, 1, 1, 1, 2], val_fraction=0.25, seed=0)
    ([0, 1, 3, 4, 5, 6, 8], [2, 7])
    """
    rng = np.random.default_rng(seed)
    targets_arr = np.asarray(targets)
    train, val = [], []
    for c in np.unique(targets_arr):
        idx = np.flatnonzero(targets_arr == c)
        rng.shuffle(idx)
        n_val = int(round(len(idx) * val_fraction)) if len(idx) > 1 else 0
        val.extend(idx[:n_val].tolist())
        train.extend(idx[n_val:].tolist())
    return sorted(train), sorted(val)


class Subset(Dataset):
    """A view of some items of a dataset that keeps its ``classes``."""

    def __init__(self, dataset: Any, indices: Sequence[int]) -> None:
        self.dataset, self.indices = dataset, list(indices)
        self.classes = dataset.classes

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Any:
        if not hasattr(self.dataset, "load"):
            return self.dataset[self.indices[i]]
        # Substitute within this subset: a training image must never be replaced by a held-out one.
        return first_decodable(self.load, len(self), i, getattr(self.dataset, "root", "subset"))

    def load(self, i: int) -> Any:
        inner = self.dataset
        return inner.load(self.indices[i]) if hasattr(inner, "load") else inner[self.indices[i]]


def _with_crop(folder: ImageFolder, crop_pct: float | None) -> ImageFolder:
    """The same scanned folder with another resize (no second scan)."""
    import copy

    view = copy.copy(folder)
    view.crop_pct = crop_pct
    view.undecodable = {}
    return view


def load_folder_split(
    root: str | os.PathLike[str],
    size: int,
    val_fraction: float = 0.2,
    seed: int = 0,
    crop_pct: float = DEFAULT_CROP_PCT,
) -> tuple[Dataset, Dataset]:
    """Training and validation sets from ``root``.

    ``root/train`` and ``root/val`` (each ``<class>/<images>``) are used as they are; otherwise
    ``root/<class>/<images>`` is split per class, ``val_fraction`` held out with ``seed``.
    Validation images get the evaluation resize with ``crop_pct`` (the one ``cspnet eval`` uses).
    """
    root = Path(root)
    _class_dirs(root)  # existence checks with clear messages
    if (root / "train").is_dir() and (root / "val").is_dir():
        train = ImageFolder(root / "train", size)
        return train, ImageFolder(root / "val", size, classes=train.classes, crop_pct=crop_pct)
    full = ImageFolder(root, size)
    train_idx, val_idx = split_indices(full.targets, val_fraction, seed)
    if not val_idx:
        raise ValueError(f"{root}: too few images to hold out a validation split")
    return Subset(full, train_idx), Subset(_with_crop(full, crop_pct), val_idx)
