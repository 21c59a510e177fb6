"""Reading images and masks; atomic writes."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from mambaseg.data.io import (decode, image_note, read_image, read_image_noted,
                              read_mask, write_png)
from mambaseg.errors import DataError

IMG = "TCGA_CS_6290_20000917/TCGA_CS_6290_20000917_10.tif"


@pytest.fixture
def sample_image(sample_root: Path) -> Path:
    return sample_root / "kaggle_3m" / IMG


def test_read_sample_image_is_rgb_uint8(sample_image):
    arr, note = read_image_noted(sample_image)
    assert arr.shape == (256, 256, 3) and arr.dtype == np.uint8
    assert note is None and arr.max() > 0


def test_compressed_and_uncompressed_tiff_read_alike(sample_image, tmp_path):
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, tifffile.imread(sample_image), photometric="rgb")
    for path, compressed in ((sample_image, True), (plain, False)):
        with tifffile.TiffFile(path) as tif:
            assert (tif.pages[0].compression != 1) == compressed
    np.testing.assert_array_equal(read_image(plain), read_image(sample_image))
    # the Pillow path reads the compressed file the same way
    np.testing.assert_array_equal(np.asarray(Image.open(sample_image)), read_image(sample_image))


def test_grayscale_png_becomes_three_channels(tmp_path):
    gray = (np.arange(64 * 48) % 251).astype(np.uint8).reshape(48, 64)
    Image.fromarray(gray).save(tmp_path / "g.png")
    arr, note = read_image_noted(tmp_path / "g.png")
    assert arr.shape == (48, 64, 3)
    assert all(np.array_equal(arr[:, :, c], gray) for c in range(3))
    assert "grayscale" in note
    with pytest.raises(DataError, match="1 channel"):
        read_image(tmp_path / "g.png", strict=True)


def test_rgba_drops_alpha_and_rgb_to_one_channel(tmp_path):
    rgba = np.random.default_rng(0).integers(0, 256, (16, 16, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.webp", lossless=True, exact=True)
    arr = read_image(tmp_path / "a.webp")
    np.testing.assert_array_equal(arr, rgba[:, :, :3])
    assert "alpha" in image_note(tmp_path / "a.webp")
    one, note = read_image_noted(tmp_path / "a.webp", channels=1)
    assert one.shape == (16, 16, 1) and "grayscale" in note


def test_sixteen_bit_image_is_rescaled(tmp_path):
    arr16 = np.linspace(100, 4000, 32 * 32).astype(np.uint16).reshape(32, 32)
    tifffile.imwrite(tmp_path / "x.tif", arr16)
    arr, note = read_image_noted(tmp_path / "x.tif")
    assert arr.dtype == np.uint8 and arr.min() == 0 and arr.max() == 255
    assert "uint16" in note


@pytest.mark.parametrize("values", [(0, 255), (0, 1)])
def test_read_mask_accepts_0_255_and_0_1(tmp_path, values):
    m = np.zeros((20, 30), np.uint8)
    m[5:10, 3:9] = values[1]
    Image.fromarray(m).save(tmp_path / "m.png")
    out = read_mask(tmp_path / "m.png")
    assert out.dtype == np.uint8 and out.shape == (20, 30)
    assert set(np.unique(out)) == {0, 1} and out.sum() == 30


def test_read_mask_sample_is_binary(sample_root):
    out = read_mask(sample_root / "kaggle_3m" / IMG.replace(".tif", "_mask.tif"))
    assert out.shape == (256, 256) and set(np.unique(out)) <= {0, 1}


def test_read_mask_rejects_other_values(tmp_path):
    m = np.zeros((8, 8), np.uint8)
    m[0, 0] = 128
    Image.fromarray(m).save(tmp_path / "bad_mask.png")
    with pytest.raises(DataError, match=r"bad_mask\.png.*128"):
        read_mask(tmp_path / "bad_mask.png")


@pytest.mark.parametrize("keep", [0.5, 0.02])
def test_truncated_file_raises_naming_it(sample_image, tmp_path, keep):
    data = sample_image.read_bytes()
    cut = tmp_path / "cut.tif"
    cut.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(DataError, match=r"cut\.tif.*unreadable or truncated"):
        read_image(cut)


def test_not_an_image_and_missing_file(tmp_path):
    (tmp_path / "text.png").write_text("hello")
    with pytest.raises(DataError, match=r"text\.png"):
        decode(tmp_path / "text.png")
    with pytest.raises(DataError, match=r"nope\.tif.*not found"):
        read_mask(tmp_path / "nope.tif")


def test_write_png_round_trip(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 256, (10, 12, 3), dtype=np.uint8)
    write_png(tmp_path / "sub" / "rgb.png", rgb)
    np.testing.assert_array_equal(read_image(tmp_path / "sub" / "rgb.png"), rgb)
    mask = np.zeros((10, 12), bool)
    mask[2:4] = True
    write_png(tmp_path / "m.png", mask)
    assert set(np.unique(np.asarray(Image.open(tmp_path / "m.png")))) == {0, 255}
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png"), mask)
    with pytest.raises(ValueError):
        write_png(tmp_path / "f.png", np.zeros((4, 4), np.float32))
    assert not (tmp_path / "f.png").exists()


@pytest.mark.parametrize("compression", ["tiff_lzw", "jpeg", "tiff_adobe_deflate", "packbits"])
def test_tiff_compressions_read(tmp_path, compression):
    rgb = np.random.default_rng(2).integers(0, 256, (32, 40, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "c.tif", compression=compression)
    arr = read_image(tmp_path / "c.tif")
    assert arr.shape == (32, 40, 3)
    if compression != "jpeg":  # lossy
        np.testing.assert_array_equal(arr, rgb)


def test_png_behind_tif_name(tmp_path):
    Image.fromarray(np.full((5, 6), 255, np.uint8)).save(tmp_path / "m_mask.tif", format="PNG")
    assert read_mask(tmp_path / "m_mask.tif").sum() == 30


# ----------------------------------------------------------------------------- no silent garbage

def _nan_tiff(path: Path) -> Path:
    """A float32 TIFF, values in [0, 1], with a 20x20 NaN patch and one +Inf pixel."""
    arr = np.random.default_rng(0).random((32, 32), dtype=np.float32)
    arr[4:24, 4:24] = np.nan
    arr[30, 30] = np.inf
    tifffile.imwrite(path, arr)
    return path


def test_non_finite_pixels_are_refused_naming_the_file(tmp_path):
    from mambaseg.data.io import NonFiniteError

    path = _nan_tiff(tmp_path / "nan.tif")
    with pytest.raises(NonFiniteError) as err:
        read_image(path)
    assert str(err.value) == f"{path}: non-finite pixels (NaN/Inf): 401 of 1024"
    assert isinstance(err.value, DataError) and err.value.count == 401


def test_nan_policy_zero_replaces_them_before_rescaling(tmp_path):
    path = _nan_tiff(tmp_path / "nan.tif")
    img, note = read_image_noted(path, nan_policy="zero")
    assert note.startswith("401 non-finite pixel(s) (NaN/Inf) replaced by 0; float32 pixels "
                           "rescaled from [0, ")
    assert (img[4:24, 4:24] == 0).all() and img[30, 30, 0] == 0
    assert img.max() == 255  # the range comes from the finite pixels, not [nan, nan]
    with pytest.raises(ValueError):
        read_image(path, nan_policy="ignore")


def test_multi_page_tiff_is_refused_not_truncated(tmp_path):
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, np.zeros((4, 16, 16), np.uint8), photometric="minisblack")
    with pytest.raises(DataError, match=r"stack.tif: multi-page image \(4 pages\): mambaseg "
                                        r"reads single 2-D slices"):
        read_image(path)
    with pytest.raises(DataError, match=r"multi-page image \(4 pages\)"):
        read_mask(path)


@pytest.mark.parametrize("suffix", [".png", ".webp"])
def test_animated_image_is_refused(tmp_path, suffix):
    frames = [Image.fromarray(np.full((8, 8, 3), 60 * i, np.uint8)) for i in range(3)]
    path = tmp_path / f"anim{suffix}"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    with pytest.raises(DataError, match=r"anim\.\w+: multi-frame image \(3 frames\)"):
        read_image(path)


def test_too_many_pixels_refused_from_the_header(tmp_path, monkeypatch):
    import warnings

    from mambaseg.data import io

    path = tmp_path / "big.png"
    Image.fromarray(np.zeros((300, 200), np.uint8)).save(path)
    tifffile.imwrite(tmp_path / "big.tif", np.zeros((300, 200), np.uint8))
    monkeypatch.setattr(io, "DECODE_LIMIT", 50_000)
    for p in (path, tmp_path / "big.tif"):
        with pytest.raises(DataError, match=r"big\.\w+: image is 200 x 300 .*more than mambaseg "
                                            "decodes"):
            read_image(p)
    assert io.image_size(path) == (300, 200)
    # Pillow's own bomb check (a lowered MAX_IMAGE_PIXELS) becomes a DataError, no warning
    monkeypatch.setattr(io, "DECODE_LIMIT", 10**9)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning escaping would fail the test
        with pytest.raises(DataError, match=r"big.png: image has more pixels than mambaseg"):
            read_image(path)
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40_000)  # 60,000: Pillow would warn
        assert read_image(path).shape == (300, 200, 3)
        assert io.image_size(path) == (300, 200)
