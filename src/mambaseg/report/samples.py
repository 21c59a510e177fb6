"""Fig. 3's inputs: which test slices to show, their images and masks, and each model's predictions.

``results/fig3_inputs.npz`` holds the chosen slices (``rel``), their ``images`` (K, H, W, C) uint8
and ground-truth ``masks`` (K, H, W) uint8, so the figure can be redrawn without the dataset.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mambaseg.data.io import read_image, read_mask
from mambaseg.errors import DataError, MambasegError
from mambaseg.report.datastats import natural_order, slice_paths

FIG3_INPUTS = "fig3_inputs.npz"
PREDICTIONS = "predictions.npz"
DEFAULT_SLICES = 4


def choose_evenly(items: list, k: int) -> list:
    """``k`` items evenly spaced through ``items`` (centres of k equal bins); all if fewer."""
    n = len(items)
    if k >= n:
        return list(items)
    if k <= 0:
        return []
    return [items[int((i + 0.5) * n / k)] for i in range(k)]


def parse_slices(value: str | None) -> int | list[str]:
    """``--slices``: a count (``4``) or a comma-separated list of slice paths."""
    if value is None or value == "":
        return DEFAULT_SLICES
    if value.strip().isdigit():
        k = int(value)
        if k < 1:
            raise MambasegError("--slices: give at least 1 slice")
        return k
    return [v.strip() for v in value.split(",") if v.strip()]


@dataclass
class Fig3Inputs:
    """Chosen slices with their images (may be None) and ground-truth masks (may be None)."""

    rels: list[str]
    images: np.ndarray | None
    masks: np.ndarray | None
    note: str = ""

    def subset(self, keep: list[str]) -> "Fig3Inputs":
        idx = [self.rels.index(r) for r in keep]
        pick = lambda a: None if a is None else a[idx]  # noqa: E731
        return Fig3Inputs(list(keep), pick(self.images), pick(self.masks), self.note)


def build_fig3_inputs(data: str | Path, test_rels: list[str], flags: dict[str, bool],
                      slices: int | list[str]) -> Fig3Inputs:
    """Read the chosen test slices from the dataset.

    ``slices`` is a count (evenly spaced through the test part's tumour slices, in
    patient/slice order) or an explicit list of slice paths.
    """
    if isinstance(slices, int):
        tumour = natural_order([r for r in test_rels if flags.get(r)])
        if not tumour:
            raise DataError("the paper split's test part has no slice with tumour")
        rels = choose_evenly(tumour, slices)
    else:
        rels = list(slices)
    paths = slice_paths(data, rels)
    images = np.stack([read_image(paths[r][0]) for r in rels])
    masks = np.stack([read_mask(paths[r][1]) for r in rels])
    return Fig3Inputs(rels, images, masks)


def load_fig3_inputs(path: str | Path) -> Fig3Inputs | None:
    """Read a saved ``fig3_inputs.npz``; None when absent."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            return Fig3Inputs([str(r) for r in z["rel"]], z["images"], z["masks"])
    except (KeyError, ValueError, OSError) as exc:
        raise DataError(f"{path}: not a valid fig3 inputs file ({exc})") from exc


def fig3_arrays(inputs: Fig3Inputs, split: str = "paper", part: str = "test") -> dict[str, np.ndarray]:
    """The arrays saved in ``fig3_inputs.npz``."""
    return {
        "rel": np.array(inputs.rels, dtype=str),
        "images": inputs.images,
        "masks": inputs.masks,
        "split": np.array(split),
        "part": np.array(part),
    }
