"""The embedded detection set: real handwritten digits (scikit-learn's bundled 8x8 digits) on canvases.

Each canvas holds one to four digits at random sizes, aspect ratios, positions and ink colours, on a
noisy background of random tone with clutter (strokes and blobs that are no digit), so a detector
must find and tell apart the ten classes. Boxes are tight around each digit's ink. Training and
validation canvases use disjoint digit images (the digits' fixed stratified split), and everything
is drawn from fixed seeds: the set is the same on every machine, and nothing is downloaded.

>>> train, val = digits_detection_split(size=64, train_images=8, val_images=4)
>>> len(train), len(val), tuple(train[0][0].shape), train.classes[:3]
(8, 4, (3, 64, 64), ['0', '1', '2'])
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from cspnet.detection.data.readers import target_rows

DIGITS_DETECTION_SIZE = 64  # canvas side
DIGITS_DETECTION_TRAIN = 2000  # canvases
DIGITS_DETECTION_VAL = 400
DIGIT_SIDES = (12, 32)  # a digit's cell side on the canvas, in pixels (before the aspect jitter)
_TRAIN_SEED, _VAL_SEED = 1, 2  # fixed: the set never depends on a training seed
_INK = 0.25  # a pixel of the upscaled digit is ink above this (of 1): the box is tight around it


class TensorDetection(Dataset):
    """In-memory ``uint8 (N, 3, S, S)`` images with per-image ``(K, 5)`` target rows and class names."""

    def __init__(self, images: Tensor, targets: list[Tensor], classes: list[str]) -> None:
        self.images, self.targets, self.classes = images, targets, classes

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.images[i], self.targets[i]


def _digit_patch(digit: np.ndarray, width: int, height: int) -> np.ndarray:
    """An 8x8 digit (0..1) upscaled (bilinear) to ``height x width``."""
    x = torch.from_numpy(digit).float()[None, None]
    return F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False)[0, 0].clamp(0, 1).numpy()


def _overlaps(box: tuple[int, int, int, int], placed: list[tuple[int, int, int, int]], margin: int = 1) -> bool:
    x1, y1, x2, y2 = box
    return any(x1 < b[2] + margin and b[0] < x2 + margin and y1 < b[3] + margin and b[1] < y2 + margin for b in placed)


def _clutter(canvas: np.ndarray, rng: np.random.Generator, grid: np.ndarray) -> None:
    """Strokes and blobs that are not digits, drawn in place on a ``(size, size, 3)`` float canvas."""
    yy, xx = grid
    size = canvas.shape[0]
    for _ in range(int(rng.integers(1, 4))):
        colour = rng.uniform(0, 1, 3).astype(np.float32)
        if rng.random() < 0.5:  # a straight stroke
            x0, y0, x1, y1 = rng.uniform(0, size, 4)
            dx, dy = x1 - x0, y1 - y0
            t = np.clip(((xx - x0) * dx + (yy - y0) * dy) / max(dx * dx + dy * dy, 1e-6), 0, 1)
            dist = np.hypot(xx - (x0 + t * dx), yy - (y0 + t * dy))
            alpha = np.clip(1.2 - dist / rng.uniform(0.6, 1.5), 0, 1) * rng.uniform(0.3, 0.8)
        else:  # a soft blob
            cx, cy, r = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(2, size / 8)
            alpha = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r)) * rng.uniform(0.3, 0.7)
        canvas[:] = canvas * (1 - alpha[..., None]) + colour * alpha[..., None]


def render_canvases(digits: np.ndarray, labels: np.ndarray, count: int, size: int, seed: int) -> tuple[Tensor, list[Tensor]]:
    """``count`` canvases drawn from ``digits`` (``(N, 8, 8)`` in 0..1): images and target rows."""
    rng = np.random.default_rng(seed)
    images = np.empty((count, size, size, 3), dtype=np.uint8)
    targets: list[Tensor] = []
    low, high = (round(s * size / DIGITS_DETECTION_SIZE) for s in DIGIT_SIDES)
    grid = np.mgrid[0:size, 0:size].astype(np.float32)
    for n in range(count):
        tone = rng.uniform(0, 1)
        canvas = np.clip(tone + rng.normal(0, 0.06, (size, size, 3)) + rng.uniform(-0.1, 0.1, 3), 0, 1).astype(np.float32)
        _clutter(canvas, rng, grid)
        placed: list[tuple[int, int, int, int]] = []
        rows: list[list[float]] = []
        for _ in range(int(rng.integers(1, 5))):
            pick = int(rng.integers(len(digits)))
            side = rng.uniform(low, high)
            aspect = rng.uniform(0.75, 1.3)
            width, height = max(4, round(side * np.sqrt(aspect))), max(4, round(side / np.sqrt(aspect)))
            if width > size or height > size:
                continue
            patch = _digit_patch(digits[pick], width, height)
            ink_rows, ink_cols = np.nonzero(patch > _INK)
            if len(ink_rows) == 0:
                continue
            for _attempt in range(10):  # a free place, else the digit is left out
                x, y = int(rng.integers(0, size - width + 1)), int(rng.integers(0, size - height + 1))
                box = (x + int(ink_cols.min()), y + int(ink_rows.min()), x + int(ink_cols.max()) + 1, y + int(ink_rows.max()) + 1)
                if not _overlaps(box, placed):
                    break
            else:
                continue
            # Ink contrasting with the background at that place.
            local = float(canvas[y : y + height, x : x + width].mean())
            step = rng.uniform(0.45, 0.8)
            ink = np.clip(local + (step if local < 0.5 else -step) + rng.uniform(-0.1, 0.1, 3), 0, 1).astype(np.float32)
            alpha = patch[..., None] * rng.uniform(0.75, 1.0)
            canvas[y : y + height, x : x + width] = canvas[y : y + height, x : x + width] * (1 - alpha) + ink * alpha
            placed.append(box)
            rows.append([float(labels[pick]), *map(float, box)])
        images[n] = np.round(canvas * 255).astype(np.uint8)
        targets.append(torch.tensor(rows, dtype=torch.float32).reshape(-1, 5))
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), targets


def digits_detection_split(
    size: int = DIGITS_DETECTION_SIZE, train_images: int = DIGITS_DETECTION_TRAIN, val_images: int = DIGITS_DETECTION_VAL
) -> tuple[TensorDetection, TensorDetection]:
    """The embedded set: ``train_images`` and ``val_images`` canvases of ``size x size``, ten classes."""
    from sklearn.datasets import load_digits

    from cspnet.data.digits import DIGITS_SPLIT_SEED, DIGITS_VAL_FRACTION
    from cspnet.data.folder import split_indices

    bunch = load_digits()
    digits = (bunch.images / 16.0).astype(np.float32)
    labels = bunch.target.astype(np.int64)
    train_idx, val_idx = split_indices(labels.tolist(), DIGITS_VAL_FRACTION, DIGITS_SPLIT_SEED)
    classes = [str(i) for i in range(10)]
    sets = []
    for idx, count, seed in ((train_idx, train_images, _TRAIN_SEED), (val_idx, val_images, _VAL_SEED)):
        images, targets = render_canvases(digits[idx], labels[idx], count, size, seed)
        sets.append(TensorDetection(images, targets, classes))
    return sets[0], sets[1]


__all__ = ["TensorDetection", "digits_detection_split", "render_canvases", "target_rows"]
