"""Small YOLO data sets the detection tests train on: coloured rectangles on grey, in milliseconds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

COLOURS = [(255, 40, 40), (40, 255, 40), (60, 60, 255)]


def make_shapes(root: Path, count: int, seed: int = 0, size: int = 64, repeat: int = 1) -> Path:
    """A YOLO data set of coloured rectangles on grey (class = colour); train and val are the same
    images (the training split lists them ``repeat`` times: more steps per epoch). Returns its data.yaml."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir(parents=True)
    for i in range(count):
        array = np.full((size, size, 3), 90, dtype=np.uint8)
        lines = []
        for k in range(1 + i % 2):
            w, h = int(rng.integers(12, 28)), int(rng.integers(12, 28))
            x, y = (4 + 30 * k, int(rng.integers(2, size - h - 2)))
            c = int(rng.integers(0, 3))
            array[y : y + h, x : x + w] = COLOURS[c]
            lines.append(f"{c} {(x + w / 2) / size} {(y + h / 2) / size} {w / size} {h / size}")
        Image.fromarray(array).save(root / "images" / f"{i}.png")
        (root / "labels" / f"{i}.txt").write_text("\n".join(lines))
    (root / "data.yaml").write_text(f"train: {['images'] * repeat}\nval: images\nnames: [red, green, blue]\n")
    return root / "data.yaml"


def white_squares(n: int, side: int, start: tuple[int, int], step: tuple[int, int],
                  size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """A batch of ``n`` black ``side`` x ``side`` images, image ``i`` with one white ``size`` (w, h) box at
    ``start + i * step``, and its target rows ``(image, class i % 3, x1, y1, x2, y2)``: what an
    augmentation must move together."""
    images = torch.zeros(n, 3, side, side)
    rows = []
    for i in range(n):
        x1, y1 = start[0] + step[0] * i, start[1] + step[1] * i
        images[i, :, y1 : y1 + size[1], x1 : x1 + size[0]] = 1.0
        rows.append([i, i % 3, x1, y1, x1 + size[0], y1 + size[1]])
    return images, torch.tensor(rows, dtype=torch.float32)
