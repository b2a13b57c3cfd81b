"""Data: the digits split, the seeded image-folder split, the resumable sampler, mixup/cutmix."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from cspnet.data import ImageFolder, MixupCutmix, ResumableSampler, load_digits_split, load_folder_split


def test_digits_split_is_fixed_and_disjoint():
    train, val = load_digits_split(8)
    again = load_digits_split(8)[1]
    assert len(train) + len(val) == 1797 and len(val) == 359
    assert torch.equal(val.images, again.images)
    assert train.images.dtype == torch.uint8 and train.images.shape[1:] == (3, 8, 8)
    assert sorted(set(val.targets.tolist())) == list(range(10))


def test_sampler_shards_ranks_and_resumes_mid_epoch():
    ranks = [ResumableSampler(10, seed=1, num_replicas=2, rank=r) for r in range(2)]
    for s in ranks:
        s.set_epoch(2)
    a, b = list(ranks[0]), list(ranks[1])
    assert len(a) == len(b) == 5 and set(a) | set(b) == set(range(10))
    ranks[0].skip(epoch=2, samples=2)
    # The length stays a whole epoch (Lightning sizes every epoch from it); the iteration skips.
    assert list(ranks[0]) == a[2:] and len(ranks[0]) == 5
    ranks[0].set_epoch(3)  # the skip belongs to epoch 2 only
    assert len(list(ranks[0])) == 5
    ranks[1].set_epoch(3)
    assert list(ranks[1]) != b  # a new order every epoch


def test_folder_split_is_seeded_and_stratified(tmp_path):
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(10):
            Image.fromarray(np.full((5, 5, 3), i, dtype=np.uint8)).save(tmp_path / c / f"{i}.png")
    train, val = load_folder_split(tmp_path, size=4, val_fraction=0.2, seed=0)
    train2, val2 = load_folder_split(tmp_path, size=4, val_fraction=0.2, seed=0)
    assert (len(train), len(val)) == (16, 4) and val.indices == val2.indices
    image, label = train[0]
    assert image.shape == (3, 4, 4) and image.dtype == torch.uint8 and train.classes == ["a", "b"]


def test_folder_with_train_and_val_subfolders_keeps_class_order(tmp_path):
    for split, classes in (("train", ("x", "y")), ("val", ("y",))):
        for c in classes:
            (tmp_path / split / c).mkdir(parents=True)
            Image.new("RGB", (3, 3)).save(tmp_path / split / c / "0.png")
    train, val = load_folder_split(tmp_path, size=4)
    assert val.classes == ["x", "y"] and val[0][1] == 1
    (tmp_path / "val" / "z").mkdir()
    Image.new("RGB", (3, 3)).save(tmp_path / "val" / "z" / "0.png")
    with pytest.raises(ValueError, match="classes the training data lacks"):
        ImageFolder(tmp_path / "val", 4, classes=["x", "y"])


@pytest.mark.parametrize("kind", ["mixup", "cutmix"])
def test_mixing_keeps_probabilities(kind):
    torch.manual_seed(0)
    x, y = torch.rand(6, 3, 8, 8), torch.arange(6) % 3
    mixed, target = MixupCutmix(3, label_smoothing=0.1, **{kind: 1.0})(x, y)
    assert mixed.shape == x.shape and torch.allclose(target.sum(1), torch.ones(6))
    assert target.min() >= 0.1 / 3 - 1e-6
