"""Data: read images and masks, find slices, verify, split, count, load and augment.

The light names below import without torch; ``SliceDataset``, ``load_arrays`` and
``augment_batch`` (torch) are loaded on first use.
"""
from mambaseg.data.io import image_note, read_image, read_image_noted, read_mask, write_png
from mambaseg.data.layout import Slice, dataset_root, find_slices
from mambaseg.data.splits import make_split, resolve_split, save_split
from mambaseg.data.stats import dataset_stats, format_stats, plot_stats, split_stats
from mambaseg.data.verify import VerifyReport, verify_dataset

__all__ = [
    "Slice", "augment_batch", "dataset_root", "dataset_stats", "find_slices",
    "format_stats", "image_note", "load_arrays", "make_split", "plot_stats", "read_image",
    "read_image_noted", "read_mask", "resolve_split", "save_split", "split_stats",
    "SliceDataset", "VerifyReport", "verify_dataset", "write_png",
]


def __getattr__(name):  # torch-based names: imported lazily
    if name in ("SliceDataset", "load_arrays", "augment_batch"):
        from mambaseg.data import dataset

        return getattr(dataset, name)
    raise AttributeError(f"module 'mambaseg.data' has no attribute {name!r}")
