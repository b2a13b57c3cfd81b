"""The embedded data set: scikit-learn's bundled handwritten digits (1,797 real 8x8 images, 10 classes).

Nothing is downloaded: the images ship inside scikit-learn. They are upsampled (bilinear) to the
requested side, replicated to 3 channels and stored as uint8 like decoded photos, so the training
code treats them exactly as a folder of images.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

DIGITS_VAL_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0  # fixed: the held-out split never depends on the training seed
DIGITS_MEAN = (0.19, 0.19, 0.19)  # measured on the 16x16 digits; the ink is sparse
DIGITS_STD = (0.33, 0.33, 0.33)


class TensorImages(Dataset):
    """In-memory ``uint8 (N, 3, H, W)`` images with integer labels and class names."""

    def __init__(self, images: Tensor, targets: Tensor, classes: list[str]) -> None:
        self.images, self.targets, self.classes = images, targets, classes

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.images[i], int(self.targets[i])


def digits_images(img_size: int) -> tuple[Tensor, Tensor]:
    """All 1,797 digits as ``uint8 (N, 3, img_size, img_size)`` and their labels."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)  # pixel values are 0..16
    if img_size != x.shape[-1]:
        x = F.interpolate(x, size=(img_size, img_size), mode="bilinear", align_corners=False)
    x = (x.clamp(0, 1) * 255).round().to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    return x, torch.from_numpy(bunch.target.astype(np.int64))


def load_digits_split(img_size: int = 16, crop_pct: float = 1.0) -> tuple[TensorImages, TensorImages]:
    """The digits split into 1,438 training and 359 held-out images (stratified, fixed seed).

    ``crop_pct`` is the held-out images' evaluation resize (see :mod:`cspnet.data.transforms`): 1.0,
    the default, keeps the whole digit; below 1 the digits are upsampled to ``img_size / crop_pct``
    and their centre kept, as a folder's images would be.
    """
    from cspnet.data.folder import split_indices
    from cspnet.data.transforms import resize_size

    images, targets = digits_images(img_size)
    train_idx, val_idx = split_indices(targets.tolist(), DIGITS_VAL_FRACTION, DIGITS_SPLIT_SEED)
    classes = [str(i) for i in range(10)]
    val_images = images[val_idx]
    side = resize_size(img_size, crop_pct)
    if side != img_size:
        start = (side - img_size) // 2
        val_images = digits_images(side)[0][val_idx][..., start : start + img_size, start : start + img_size]
    return (
        TensorImages(images[train_idx], targets[train_idx], classes),
        TensorImages(val_images.contiguous(), targets[val_idx], classes),
    )
