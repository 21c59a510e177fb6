"""SliceDataset, load_arrays and augment_batch."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mambaseg.data.dataset import SliceDataset, augment_batch, load_arrays
from mambaseg.data.io import read_image, read_mask
from mambaseg.data.layout import find_slices
from mambaseg.errors import DataError


@pytest.fixture
def slices(sample_root):
    return find_slices(sample_root)


def test_slice_dataset_item(slices):
    ds = SliceDataset(slices)
    assert len(ds) == 62
    image, mask = ds[9]
    assert image.shape == (3, 256, 256) and image.dtype == torch.float32
    assert mask.shape == (1, 256, 256) and mask.dtype == torch.float32
    assert 0 <= image.min() and image.max() <= 1 and image.max() > 0
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    expected = torch.from_numpy(read_image(slices[9].image)).permute(2, 0, 1).float() / 255
    assert torch.equal(image, expected)


def test_slice_dataset_augmented_item(slices):
    torch.manual_seed(0)
    tumour = next(i for i, s in enumerate(slices) if read_mask(s.mask).any())
    image, mask = SliceDataset(slices, augment=True)[tumour]
    plain, _ = SliceDataset(slices)[tumour]
    assert image.shape == plain.shape and not torch.equal(image, plain)
    assert set(mask.unique().tolist()) == {0.0, 1.0}


def test_load_arrays(slices):
    images, masks = load_arrays(slices, progress=False)
    assert images.shape == (62, 3, 256, 256) and images.dtype == torch.uint8
    assert masks.shape == (62, 1, 256, 256) and masks.dtype == torch.uint8
    assert set(masks.unique().tolist()) == {0, 1}
    assert int((masks.flatten(1).amax(1) > 0).sum()) == 25
    for i in (0, 37, 59):
        assert np.array_equal(images[i].permute(1, 2, 0).numpy(), read_image(slices[i].image))
        assert np.array_equal(masks[i, 0].numpy(), read_mask(slices[i].mask))


def test_load_arrays_size_mismatch(sample_copy):
    import tifffile

    s = find_slices(sample_copy)
    tifffile.imwrite(s[5].image, np.zeros((128, 128, 3), np.uint8), photometric="rgb")
    with pytest.raises(DataError, match=s[5].image.name):
        load_arrays(s, progress=False)


def _batch(n=6, h=64, w=48):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(n, 3, h, w, generator=g)
    masks = torch.zeros(n, 1, h, w)
    masks[:, :, 10:30, 5:20] = 1
    return images, masks


def test_augment_keeps_masks_binary_and_changes_images():
    images, masks = _batch()
    out, out_masks = augment_batch(images, masks, torch.Generator().manual_seed(1))
    assert out.shape == images.shape and out_masks.shape == masks.shape
    assert set(out_masks.unique().tolist()) == {0.0, 1.0}
    assert out.min() >= 0 and out.max() <= 1
    assert not torch.allclose(out, images, atol=1e-3)
    assert not torch.equal(out_masks, masks)


def test_augment_is_deterministic_for_a_generator():
    images, masks = _batch()
    a = augment_batch(images, masks, torch.Generator().manual_seed(7))
    b = augment_batch(images, masks, torch.Generator().manual_seed(7))
    c = augment_batch(images, masks, torch.Generator().manual_seed(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_augment_flips_only_are_exact():
    images, masks = _batch(n=16)
    out, out_masks = augment_batch(images, masks, torch.Generator().manual_seed(3), rotate=0,
                                   scale=(1, 1), brightness=0, contrast=0)
    seen = set()
    for i in range(16):
        for dims in ((), (2,), (1,), (1, 2)):  # (C, H, W): W, H, both
            flipped = images[i].flip(dims) if dims else images[i]
            if torch.allclose(out[i], flipped, atol=1e-5):
                assert torch.equal(out_masks[i], masks[i].flip(dims) if dims else masks[i])
                seen.add(dims)
                break
        else:
            pytest.fail(f"sample {i} is not a flip of its input")
    assert len(seen) >= 3


def test_augment_uint8_masks_keep_dtype():
    images, masks = _batch(n=2)
    _, out_masks = augment_batch(images, masks.to(torch.uint8), torch.Generator().manual_seed(0))
    assert out_masks.dtype == torch.uint8 and set(out_masks.unique().tolist()) <= {0, 1}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_augment_on_cuda_matches_cpu_generator_use():
    images, masks = _batch()
    out, out_masks = augment_batch(images.cuda(), masks.cuda(), torch.Generator().manual_seed(1))
    ref, ref_masks = augment_batch(images, masks, torch.Generator().manual_seed(1))
    assert out.is_cuda and torch.allclose(out.cpu(), ref, atol=1e-4)
    assert set(out_masks.unique().tolist()) <= {0.0, 1.0}


def test_augment_rotation_keeps_shapes_on_non_square_images():
    h, w = 64, 128
    yy, xx = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    disk = (((yy - h / 2) ** 2 + (xx - w / 2) ** 2) <= 20 ** 2).float()[None, None]
    images, masks = disk.repeat(8, 3, 1, 1), disk.repeat(8, 1, 1, 1)
    _, out = augment_batch(images, masks, torch.Generator().manual_seed(0), flip=False,
                           scale=(1, 1), rotate=15)
    for m in out[:, 0]:
        var_y = (m * (yy - h / 2) ** 2).sum() / m.sum()
        var_x = (m * (xx - w / 2) ** 2).sum() / m.sum()
        assert abs(var_x / var_y - 1) < 0.05  # still a disk, not an ellipse
        assert abs(m.sum() / disk.sum() - 1) < 0.03
