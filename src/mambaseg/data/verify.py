"""Check a dataset completely and report every problem at once.

Problems found (one line each, naming the file): image without mask, mask without image,
unreadable or truncated file, multi-page or multi-frame file, image too large to decode,
image/mask size mismatch, unexpected channel count or pixel type, non-finite pixels (NaN/Inf),
mask values other than {0, 1} / {0, 255}, ambiguous pairings, and an empty or missing folder.
Every file is decoded exactly once, on a thread pool.
"""
from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from mambaseg.data.io import (NonFiniteError, count_nonfinite, decode, image_from_array,
                              mask_from_array)
from mambaseg.data.layout import Slice, scan
from mambaseg.errors import DataError


@dataclass
class VerifyReport:
    """What ``verify_dataset`` found; ``ok`` is True when ``problems`` is empty."""

    root: Path
    patients: int = 0
    slices: int = 0
    tumour_slices: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        """One line: patients, slices, slices with and without tumour."""
        return (f"{self.root}: {self.patients} patients, {self.slices} slices, "
                f"{self.tumour_slices} with tumour, {self.slices - self.tumour_slices} without")


def default_workers() -> int:
    """Threads for decoding: decoders release the GIL, so a few per core pay off."""
    return min(16, 2 * (os.cpu_count() or 1))


def _check_pair(s: Slice, channels: int) -> tuple[list[str], bool]:
    """Problems of one slice, and whether its mask holds tumour."""
    problems: list[str] = []
    image = mask = None
    try:
        arr = decode(s.image)
        bad = count_nonfinite(arr)
        if bad:  # listed besides the pixel type, which strict reading refuses too
            problems.append(str(NonFiniteError(s.image, bad, arr.shape[0] * arr.shape[1])))
        image = image_from_array(arr, s.image, channels, strict=True)[0]
    except DataError as exc:
        problems.append(str(exc))
    if s.mask is None:
        problems.append(f"{s.image}: image without mask (expected {s.image.stem}_mask.tif "
                        f"or .png beside it)")
        return problems, False
    try:
        mask = mask_from_array(decode(s.mask), s.mask)
    except DataError as exc:
        problems.append(str(exc))
    if image is not None and mask is not None and image.shape[:2] != mask.shape:
        problems.append(f"{s.mask}: mask is {mask.shape[1]}x{mask.shape[0]} but its image "
                        f"{s.image.name} is {image.shape[1]}x{image.shape[0]} (width x height)")
    return problems, mask is not None and bool(mask.any())


def verify_dataset(path: str | os.PathLike, channels: int = 3, progress: bool | None = None,
                   workers: int | None = None) -> VerifyReport:
    """Check every image and mask under ``path``; never raises for a data problem.

    ``progress``: True shows a tqdm bar on stderr, None shows it only on a terminal.
    """
    path = Path(path)
    report = VerifyReport(root=path)
    try:
        found = scan(path)
    except DataError as exc:
        report.problems.append(str(exc))
        return report
    report.root = found.root
    if not found.slices and not found.orphan_masks:
        report.problems.append(f"{found.root}: folder is empty (no images or masks found)")
        return report
    report.problems.extend(f"{file}: {problem}" for file, problem in found.problems)
    report.problems.extend(f"{m}: mask without image (expected "
                           f"{m.stem[: -len('_mask')]}{m.suffix} or another image format "
                           "beside it)" for m in found.orphan_masks)
    report.patients = len({s.patient for s in found.slices})
    report.slices = len(found.slices)

    from tqdm import tqdm

    disable = None if progress is None else not progress
    with ThreadPoolExecutor(workers or default_workers()) as pool:
        results = pool.map(lambda s: _check_pair(s, channels), found.slices)
        for problems, tumour in tqdm(results, total=len(found.slices), desc="verify",
                                     unit="slice", file=sys.stderr, disable=disable,
                                     leave=False):
            report.problems.extend(problems)
            report.tumour_slices += tumour
    return report
