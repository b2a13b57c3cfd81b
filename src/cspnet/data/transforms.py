"""Batch-level preprocessing on tensors: normalisation, kornia augmentation, mixup / cutmix.

Everything runs on whole batches after they reach the device, using the global torch RNG; the
training module seeds that RNG per step so augmentation is reproducible across resumes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# One home for the input-side bound and the default statistics (cspnet.metadata, L0); re-exported here.
from cspnet.metadata import IMAGENET_MEAN, IMAGENET_STD, MAX_IMG_SIZE, check_img_size  # noqa: F401

# Evaluation resize (timm's ``crop_pct``): the short side goes to ``floor(img_size / crop_pct)``, then
# the centre ``img_size`` square is kept. 0.875 (224 of 256) is the ImageNet convention of timm and
# torchvision, right for photos whose subject fills the frame; the digits are already exactly
# ``img_size`` square and keep all of it (1.0).
DEFAULT_CROP_PCT = 0.875
DIGITS_CROP_PCT = 1.0


def check_crop_pct(crop_pct: Any, what: str = "--crop-pct") -> float:
    """``crop_pct`` as a float in ``(0, 1]``, else ``ValueError``."""
    if isinstance(crop_pct, bool) or not isinstance(crop_pct, int | float) or not 0 < crop_pct <= 1:
        raise ValueError(f"{what} {crop_pct!r} is invalid: expected a fraction in (0, 1], e.g. 0.875")
    return float(crop_pct)


def run_crop_pct(train_config: Mapping[str, Any], data: str | None = None) -> float:
    """The evaluation ``crop_pct`` of a training run: the one it recorded, else its data's default.

    >>> run_crop_pct({"data": "digits"}), run_crop_pct({"data": "photos/"}), run_crop_pct({"crop_pct": 0.95})
    (1.0, 0.875, 0.95)
    """
    recorded = train_config.get("crop_pct")
    if recorded is not None:
        return check_crop_pct(recorded, what="the checkpoint's crop_pct")
    data = data if data is not None else train_config.get("data", "digits")
    return DIGITS_CROP_PCT if data == "digits" else DEFAULT_CROP_PCT


def resize_size(img_size: int, crop_pct: float) -> int:
    """The short side images are resized to before the centre ``img_size`` crop.

    >>> resize_size(224, 0.875), resize_size(16, 1.0)
    (256, 16)
    """
    return max(img_size, math.floor(img_size / check_crop_pct(crop_pct) + 1e-6))


class Normalize(nn.Module):
    """uint8 or [0, 1] float ``(N, C, H, W)`` -> ``(x / 255 - mean) / std`` as float32.

    >>> Normalize((0.5,) * 3, (0.5,) * 3)(torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)).unique()
    tensor([1.])
    """

    mean: Tensor
    std: Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        return (x - self.mean) / self.std


class BatchAugment(nn.Module):
    """Random resized crop, horizontal flip and colour jitter on a ``[0, 1]`` float batch (kornia).

    ``scale`` is the crop's area range; ``hflip`` the flip probability (0 for digits: a mirrored 2
    is no digit); ``jitter`` the brightness/contrast/saturation strength (0 disables it).
    """

    def __init__(
        self, size: int, scale: tuple[float, float] = (0.35, 1.0), hflip: float = 0.5, jitter: float = 0.2
    ) -> None:
        super().__init__()
        import kornia.augmentation as K

        ops: list[nn.Module] = [K.RandomResizedCrop((size, size), scale=scale)]
        if hflip > 0:
            ops.append(K.RandomHorizontalFlip(p=hflip))
        if jitter > 0:
            ops.append(K.ColorJitter(jitter, jitter, jitter, 0.0, p=0.8))
        self.ops = nn.Sequential(*ops)

    def forward(self, x: Tensor) -> Tensor:
        return self.ops(x)


class MixupCutmix(nn.Module):
    """Mixup (alpha ``mixup``) and/or CutMix (alpha ``cutmix``) with soft, label-smoothed targets.

    Each batch gets one of the enabled methods (chosen at random when both are), mixing it with
    its own reversal. Returns the mixed images and ``(N, num_classes)`` target probabilities.

    >>> x, y = torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    >>> xm, ym = MixupCutmix(num_classes=5, mixup=0.2)(x, y)
    >>> xm.shape, ym.shape, bool(torch.allclose(ym.sum(1), torch.ones(4)))
    (torch.Size([4, 3, 8, 8]), torch.Size([4, 5]), True)
    """

    def __init__(self, num_classes: int, mixup: float = 0.0, cutmix: float = 0.0, label_smoothing: float = 0.0):
        super().__init__()
        self.num_classes, self.mixup, self.cutmix, self.label_smoothing = num_classes, mixup, cutmix, label_smoothing

    @property
    def active(self) -> bool:
        return self.mixup > 0 or self.cutmix > 0

    def soft_targets(self, y: Tensor) -> Tensor:
        off = self.label_smoothing / self.num_classes
        return F.one_hot(y, self.num_classes).float() * (1 - self.label_smoothing) + off

    def forward(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        target = self.soft_targets(y)
        if not self.active:
            return x, target
        use_cutmix = self.cutmix > 0 and (self.mixup <= 0 or bool(torch.rand(()) < 0.5))
        alpha = self.cutmix if use_cutmix else self.mixup
        lam = float(torch.distributions.Beta(alpha, alpha).sample())
        flipped = x.flip(0)
        if use_cutmix:
            h, w = x.shape[-2:]
            cut_h, cut_w = int(h * (1 - lam) ** 0.5), int(w * (1 - lam) ** 0.5)
            cy, cx = int(torch.randint(h, ())), int(torch.randint(w, ()))
            y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, h)
            x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, w)
            x = x.clone()
            x[..., y0:y1, x0:x1] = flipped[..., y0:y1, x0:x1]
            lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)  # the area actually pasted
        else:
            x = x * lam + flipped * (1 - lam)
        return x, target * lam + target.flip(0) * (1 - lam)
