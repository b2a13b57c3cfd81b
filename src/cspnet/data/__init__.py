"""Image classification data: an ImageFolder-style reader, the bundled digits, batch augmentation.

>>> from cspnet.data import load_digits_split
>>> train, val = load_digits_split(img_size=16)
>>> len(train), len(val), tuple(train[0][0].shape), train.classes[:3]
(1438, 359, (3, 16, 16), ['0', '1', '2'])
"""

from cspnet.data.digits import load_digits_split
from cspnet.data.folder import (
    IMAGE_EXTENSIONS,
    ImageFolder,
    decode_image,
    image_size,
    load_folder_split,
    read_image,
    split_indices,
)
from cspnet.data.sampler import ResumableSampler
from cspnet.data.transforms import BatchAugment, MixupCutmix, Normalize

__all__ = [
    "IMAGE_EXTENSIONS",
    "BatchAugment",
    "ImageFolder",
    "MixupCutmix",
    "Normalize",
    "ResumableSampler",
    "decode_image",
    "image_size",
    "load_digits_split",
    "load_folder_split",
    "read_image",
    "split_indices",
]
