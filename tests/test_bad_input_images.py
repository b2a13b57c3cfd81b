"""Images as users have them: 16-bit and float files, EXIF rotation, truncated or bit-flipped JPEGs,
decompression bombs, empty class folders, and the evaluation resize (timm's ``crop_pct``)."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from cspnet.data import ImageFolder, load_folder_split, read_image
from cspnet.data.folder import _readable

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def noise_jpeg(size: int = 64, seed: int = 0) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)).save(
        buffer, format="JPEG", quality=90
    )
    return buffer.getvalue()


# -- bit depth -------------------------------------------------------------------------------------
@SETTINGS
@given(values=arrays(np.uint16, (6, 6)))
def test_16_bit_pngs_are_scaled_not_clipped(tmp_path: Path, values: np.ndarray) -> None:
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I")
    got = read_image(path, 6)
    expected = np.rint(values.astype(np.float64) * 255 / 65535).astype(np.uint8)
    assert torch.equal(got, torch.from_numpy(expected).expand(3, -1, -1))


def test_a_16_bit_1000_is_dark_not_white(tmp_path: Path) -> None:
    path = tmp_path / "thousand.png"
    Image.fromarray(np.full((4, 4), 1000, dtype=np.uint16)).save(path)
    assert read_image(path, 4).unique().tolist() == [4]  # 1000 / 65535 * 255; it was 255 before
    tiff = tmp_path / "thousand32.tif"
    Image.fromarray(np.full((4, 4), 1000, dtype=np.int32)).save(tiff)  # mode I
    assert read_image(tiff, 4).unique().tolist() == [4]


@SETTINGS
@given(values=arrays(np.float32, (5, 5), elements=st.floats(0, 1, width=32)))
def test_float_tiffs_in_0_1_are_scaled_to_0_255(tmp_path: Path, values: np.ndarray) -> None:
    path = tmp_path / "float.tif"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode == "F"
    got = read_image(path, 5)[0].numpy()
    expected = np.rint(values.astype(np.float64) * 255).astype(np.uint8)
    assert np.array_equal(got, expected)


def test_float_tiffs_of_other_ranges_keep_their_contrast(tmp_path: Path) -> None:
    path = tmp_path / "hdr.tif"
    Image.fromarray(np.array([[-5.0, 0.0], [5.0, 15.0]] * 1, dtype=np.float32).repeat(2, 0).repeat(2, 1)).save(path)
    got = read_image(path, 4)[0]
    assert got.min() == 0 and got.max() == 255 and len(got.unique()) == 4  # min..max mapped, nothing clipped


# -- orientation -----------------------------------------------------------------------------------
def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    pixels = np.zeros((16, 32, 3), dtype=np.uint8)
    pixels[:, :16] = (255, 0, 0)  # left half red, right half blue
    pixels[:, 16:] = (0, 0, 255)
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif, quality=100)
    got = read_image(path, 16).float()
    # Displayed upright, the red half is on top: the image is 16 wide and 32 high.
    top, bottom = got[:, :8].mean((1, 2)), got[:, 8:].mean((1, 2))
    assert top[0] > 200 and top[2] < 50 and bottom[2] > 200 and bottom[0] < 50


# -- bad files -------------------------------------------------------------------------------------
def test_a_truncated_jpeg_passes_verify_but_is_a_read_error(tmp_path: Path) -> None:
    path = tmp_path / "cut.jpg"
    path.write_bytes(noise_jpeg()[:3000])
    assert _readable(path)  # what the folder scan checks: verify() does not decode JPEG data
    with pytest.raises(ValueError, match="cannot read image .*cut.jpg"):
        read_image(path, 8)


def test_a_decompression_bomb_is_a_read_error(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "bomb.png"
    Image.fromarray(np.zeros((64, 64), dtype=np.uint8)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 4096 pixels: over twice the limit
    with pytest.raises(ValueError, match="too large to decode safely"):
        read_image(path, 8)


def write_folder(root: Path, classes=("cat", "dog"), per_class: int = 3, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(root / c / f"{i}.png")


def test_undecodable_images_are_skipped_counted_and_replaced(tmp_path: Path) -> None:
    write_folder(tmp_path)
    (tmp_path / "cat" / "cut.jpg").write_bytes(noise_jpeg()[:3000])
    folder = ImageFolder(tmp_path, 8)
    assert len(folder) == 7  # the truncated file passed the scan
    with pytest.warns(UserWarning, match=r"skipped an undecodable image \(1 so far\).*cut.jpg"):
        items = [folder[i] for i in range(len(folder))]
    assert all(x.shape == (3, 8, 8) and x.dtype == torch.uint8 for x, _ in items)
    assert list(folder.undecodable) == [tmp_path / "cat" / "cut.jpg"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # known bad: no second warning, no second decode attempt
        assert folder[3][1] == folder.targets[4]
    assert folder.load(3) is None


def test_a_split_replaces_a_bad_training_image_with_a_training_image(tmp_path: Path) -> None:
    write_folder(tmp_path, per_class=5)
    train, val = load_folder_split(tmp_path, 8, val_fraction=0.4)
    train_files = [train.dataset.samples[i][0] for i in train.indices]
    keep = train_files[-1]
    for path in train_files[:-1]:  # broken after the scan: only `keep` still decodes among training files
        path.write_bytes(noise_jpeg()[:500])
    expected = read_image(keep, 8)
    with pytest.warns(UserWarning, match="undecodable"):
        items = [train[i] for i in range(len(train))]
    assert all(torch.equal(x, expected) for x, _ in items)  # never a held-out image in its place
    assert len(val) == 4 and all(val[i][0].shape == (3, 8, 8) for i in range(len(val)))


def _encoded(fmt: str) -> bytes:
    rng = np.random.default_rng(1)
    pixels = {
        "PNG16": rng.integers(0, 65535, (24, 24), dtype=np.uint16),
        "TIFF-F": rng.random((24, 24), dtype=np.float32),
    }.get(fmt, rng.integers(0, 255, (24, 24, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt.split("-")[0].removesuffix("16"))
    return buffer.getvalue()


ENCODED = {fmt: _encoded(fmt) for fmt in ("JPEG", "PNG", "PNG16", "TIFF", "TIFF-F", "GIF", "WEBP", "BMP")}


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow's notes on corrupt TIFF tags / EXIF
@settings(SETTINGS, max_examples=150)
@given(fmt=st.sampled_from(sorted(ENCODED)),
       flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 7)), min_size=1, max_size=20),
       cut=st.one_of(st.none(), st.integers(20, 4000)))  # fmt: skip
def test_damaged_files_of_every_format_never_crash_a_folder(tmp_path: Path, fmt, flips, cut) -> None:
    """Bit flips and truncation: read_image returns an image or raises ValueError, nothing else
    (a fuzz run found a TypeError from a damaged TIFF tag); a folder still yields every item."""
    data = bytearray(ENCODED[fmt])
    for position, bit in flips:
        data[position % len(data)] ^= 1 << bit
    data = data[:cut] if cut else data
    root = tmp_path / "flips"
    write_folder(root, per_class=1)
    (root / "cat" / "z.img").write_bytes(bytes(data))
    try:
        got = read_image(root / "cat" / "z.img", 8)
        assert got.shape == (3, 8, 8) and got.dtype == torch.uint8
    except ValueError as exc:
        assert "z.img" in str(exc)
    (root / "cat" / "z.img").rename(root / "cat" / "z.tif")  # an extension the folder reads
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        folder = ImageFolder(root, 8)
        for i in range(len(folder)):
            assert folder[i][0].shape == (3, 8, 8)


def test_an_empty_class_folder_is_an_error_not_an_extra_class(tmp_path: Path) -> None:
    write_folder(tmp_path / "train")
    (tmp_path / "train" / "empty").mkdir()
    with pytest.raises(ValueError, match="class folder.* with no readable image: .*empty"):
        ImageFolder(tmp_path / "train", 8)
    # A validation folder read with the training classes may lack a class: a warning.
    write_folder(tmp_path / "val", classes=("cat",))
    (tmp_path / "val" / "dog").mkdir()
    with pytest.warns(UserWarning, match="no readable image for class.*dog"):
        val = ImageFolder(tmp_path / "val", 8, classes=["cat", "dog"])
    assert val.classes == ["cat", "dog"] and set(val.targets) == {0}


# -- evaluation resize -----------------------------------------------------------------------------
def test_crop_pct_resizes_the_short_side_then_crops_the_centre(tmp_path: Path) -> None:
    pixels = np.zeros((16, 48, 3), dtype=np.uint8)  # three 16x16 squares: red, green, blue
    pixels[:, :16, 0] = pixels[:, 16:32, 1] = pixels[:, 32:, 2] = 255
    path = tmp_path / "wide.png"
    Image.fromarray(pixels).save(path)
    centre = read_image(path, 8, crop_pct=1.0).float().mean((1, 2))
    assert centre[1] > 230 and centre[0] < 25 and centre[2] < 25  # the green middle square (edges blur)
    squashed = read_image(path, 8).float().mean((1, 2))  # training: the whole image to the square
    assert all(60 < float(c) < 110 for c in squashed)
    zoomed = read_image(path, 8, crop_pct=0.5)  # short side 16: the centre 8x8 of the green square
    assert zoomed[1].min() == 255 and zoomed[0].max() == 0


@SETTINGS
@given(width=st.integers(1, 80), height=st.integers(1, 80), size=st.integers(1, 40),
       crop_pct=st.one_of(st.none(), st.floats(0.05, 1.0)))  # fmt: skip
def test_every_image_shape_gives_the_requested_square(tmp_path: Path, width, height, size, crop_pct) -> None:
    path = tmp_path / "any.png"
    Image.fromarray(np.full((height, width, 3), 77, dtype=np.uint8)).save(path)
    got = read_image(path, size, crop_pct)
    assert got.shape == (3, size, size) and got.unique().tolist() == [77]
