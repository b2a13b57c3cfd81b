"""Small YOLO data sets the detection tests train on: coloured rectangles on grey, in milliseconds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
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
