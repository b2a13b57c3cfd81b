"""An ImageFolder-style reader: ``ROOT/<class>/*`` (or ``ROOT/train`` + ``ROOT/val``), decoded with Pillow.

Images are decoded in DataLoader workers, converted to RGB and resized to a fixed square side so
batches stack; random augmentation happens later, on whole batches (:mod:`cspnet.data.transforms`).
Unreadable files are found when the folder is scanned (Pillow ``verify``), skipped with one warning
that counts them; a folder with nothing readable is an error.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def read_image(path: str | os.PathLike[str], size: int) -> Tensor:
    """Decode ``path`` to a ``(3, size, size)`` uint8 tensor (RGB, bilinear resize).

    Raises ``ValueError`` naming the file when Pillow cannot read it.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = img.convert("RGB").resize((size, size), Image.BILINEAR)
            array = np.asarray(img, dtype=np.uint8).copy()
    except (OSError, UnidentifiedImageError, SyntaxError) as exc:
        raise ValueError(f"cannot read image {path}: {exc}") from exc
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def _readable(path: Path) -> bool:
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.verify()
        return True
    except Exception:  # any decoder error means the file is skipped
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
    by default it is the sorted sub-folder names.
    """

    def __init__(self, root: str | os.PathLike[str], size: int, classes: Sequence[str] | None = None) -> None:
        self.root = Path(root)
        self.size = size
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
        self.samples = [(p, y) for p, y in candidates if _readable(p)]
        skipped = len(candidates) - len(self.samples)
        if not self.samples:
            raise ValueError(f"{self.root}: none of its {len(candidates)} images can be read")
        if skipped:
            first = next(p for p, _ in candidates if not _readable(p))
            warnings.warn(f"{self.root}: skipped {skipped} unreadable image(s), e.g. {first}", stacklevel=2)
        self.targets = [y for _, y in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        path, target = self.samples[i]
        return read_image(path, self.size), target


def _split_indices(targets: Sequence[int], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """A seeded, per-class (stratified) split: the same files land in val on every run and machine."""
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

    def __init__(self, dataset: Dataset, indices: Sequence[int]) -> None:
        self.dataset, self.indices = dataset, list(indices)
        self.classes = dataset.classes

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.dataset[self.indices[i]]


def load_folder_split(
    root: str | os.PathLike[str], size: int, val_fraction: float = 0.2, seed: int = 0
) -> tuple[Dataset, Dataset]:
    """Training and validation sets from ``root``.

    ``root/train`` and ``root/val`` (each ``<class>/<images>``) are used as they are; otherwise
    ``root/<class>/<images>`` is split per class, ``val_fraction`` held out with ``seed``.
    """
    root = Path(root)
    _class_dirs(root)  # existence checks with clear messages
    if (root / "train").is_dir() and (root / "val").is_dir():
        train = ImageFolder(root / "train", size)
        return train, ImageFolder(root / "val", size, classes=train.classes)
    full = ImageFolder(root, size)
    train_idx, val_idx = _split_indices(full.targets, val_fraction, seed)
    if not val_idx:
        raise ValueError(f"{root}: too few images to hold out a validation split")
    return Subset(full, train_idx), Subset(full, val_idx)
