"""Torch access to slices: a per-file ``SliceDataset`` and ``load_arrays`` for in-memory training.

The fast training path decodes a whole split once with ``load_arrays`` (the full dataset is
0.77 GB as uint8) and keeps it as one tensor, possibly on the GPU, so an epoch does no file I/O;
``augment_batch`` then augments batches where they live.
"""
from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from mambaseg.data.augment import augment_batch
from mambaseg.data.channels import select_channels
from mambaseg.data.io import read_image_noted, read_mask
from mambaseg.data.layout import Slice
from mambaseg.data.verify import default_workers
from mambaseg.errors import DataError

__all__ = ["SliceDataset", "load_arrays", "augment_batch"]


def _read(path, channels: int | str, nan_policy: str = "error") -> tuple[np.ndarray, str | None]:
    """``read_image_noted`` for an int ``channels``; for a channel choice (``"all"``,
    ``"flair"``: ``data.channels``) the LGG channels it names, read as RGB."""
    if isinstance(channels, str):
        image, note = read_image_noted(path, 3, nan_policy=nan_policy)
        return select_channels(image, channels), note
    return read_image_noted(path, channels, nan_policy=nan_policy)


def _mask_of(s: Slice) -> np.ndarray:
    if s.mask is None:
        raise DataError(f"{s.image}: image without mask (run 'mambaseg data verify')")
    return read_mask(s.mask)


class SliceDataset(Dataset):
    """Slices as ``(image float32 (C,H,W) in [0,1], mask float32 (1,H,W) in {0,1})`` pairs.

    With ``augment=True`` each sample goes through ``augment_batch`` (torch's global RNG, so
    DataLoader workers draw different augmentations). ``channels``: as ``load_arrays``.
    """

    def __init__(self, slices: Sequence[Slice], augment: bool = False,
                 channels: int | str = 3):
        self.slices = list(slices)
        self.augment = augment
        self.channels = channels

    def __len__(self) -> int:
        return len(self.slices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.slices[i]
        image = torch.from_numpy(_read(s.image, self.channels)[0]).permute(2, 0, 1)
        image = image.float().div_(255.0)
        mask = _mask_of(s)
        if mask.shape != image.shape[1:]:
            raise DataError(f"{s.mask}: mask size {mask.shape} differs from image size "
                            f"{tuple(image.shape[1:])}")
        mask = torch.from_numpy(mask)[None].float()
        if self.augment:
            image, mask = augment_batch(image[None], mask[None])
            image, mask = image[0], mask[0]
        return image, mask


def load_arrays(slices: Sequence[Slice], progress: bool | None = True, channels: int | str = 3,
                workers: int | None = None, nan_policy: str = "error",
                notes: dict[str, str] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode ``slices`` into ``(images uint8 (N,C,H,W), masks uint8 (N,1,H,W) in {0,1})``.

    Files are decoded on a thread pool straight into preallocated tensors. All slices must have
    one size (DataError names the first that does not). ``progress``: True shows a tqdm bar on
    stderr when it is a terminal, False never. Non-finite pixels raise a DataError naming the
    file, or with ``nan_policy="zero"`` become 0; ``notes`` (when given) then collects each
    converted image's note by ``Slice.rel``. ``channels``: the number of channels (images are
    converted as ``io.read_image`` does), or a channel choice of ``data.channels`` (``"all"``,
    ``"flair"``): the LGG channels it names (``"flair"``: channel 1 of the RGB slices alone).
    """
    slices = list(slices)
    if not slices:
        raise DataError("load_arrays: no slices to load")
    def decode(s: Slice):
        image, note = _read(s.image, channels, nan_policy)
        if note and notes is not None and nan_policy == "zero" and "non-finite" in note:
            notes[s.rel] = note
        return image

    first = decode(slices[0])
    h, w = first.shape[:2]
    images = torch.empty((len(slices), first.shape[2], h, w), dtype=torch.uint8)
    masks = torch.empty((len(slices), 1, h, w), dtype=torch.uint8)
    images_np, masks_np = images.numpy(), masks.numpy()

    def load(i: int) -> None:
        s = slices[i]
        image = first if i == 0 else decode(s)
        if image.shape[:2] != (h, w):
            raise DataError(f"{s.image}: image is {image.shape[1]}x{image.shape[0]}, but "
                            f"{slices[0].image.name} is {w}x{h}; all slices must share one size")
        mask = _mask_of(s)
        if mask.shape != (h, w):
            raise DataError(f"{s.mask}: mask is {mask.shape[1]}x{mask.shape[0]}, its image "
                            f"is {w}x{h}")
        images_np[i] = image.transpose(2, 0, 1)
        masks_np[i, 0] = mask

    disable = True if progress is False else None
    pool = ThreadPoolExecutor(workers or default_workers())
    try:
        for _ in tqdm(pool.map(load, range(len(slices))), total=len(slices), desc="load",
                      unit="slice", file=sys.stderr, disable=disable, leave=False):
            pass
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return images, masks
