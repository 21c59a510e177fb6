"""Finding the slices of a dataset: the Kaggle ``kaggle_3m`` layout and generic folders.

Kaggle layout: ``<root>/<patient>/<patient>_<n>.tif`` with ``<patient>_<n>_mask.tif`` (and an
optional ``data.csv``); ``path`` may be ``kaggle_3m`` itself or its parent.

Generic folder: image files (tif, tiff, png, webp, jpg, jpeg) anywhere below ``path``, each paired
with the mask beside it named ``<image stem>_mask`` (tif, tiff or png). The patient is the image's
folder relative to the root (its name, for one level), or the file stem for files directly in the
root. The slice index is the number ending the stem (``_2`` sorts before ``_10``), or the position
in natural order when the stem has no number.

Hidden files and folders (name starting with ``.``) are ignored.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from mambaseg.data.io import IMAGE_SUFFIXES, MASK_SUFFIXES
from mambaseg.errors import DataError

_MASK_TAG = "_mask"
_TRAILING_NUMBER = re.compile(r"(\d+)$")
_DIGITS = re.compile(r"(\d+)")


@dataclass(frozen=True)
class Slice:
    """One image (and its mask) of a dataset.

    ``root`` is the dataset root the slice was found under (not compared, not required);
    ``rel`` is the image path relative to it as a POSIX string, the name splits use.
    """

    image: Path
    mask: Path | None
    patient: str
    index: int
    root: Path | None = field(default=None, compare=False, repr=False)

    @property
    def rel(self) -> str:
        """Image path relative to the dataset root (POSIX); the path as given without a root."""
        if self.root is None:
            return self.image.as_posix()
        return self.image.relative_to(self.root).as_posix()


@dataclass
class Scan:
    """Everything found under a dataset root, problems included (for ``verify``)."""

    root: Path
    slices: list[Slice]
    orphan_masks: list[Path] = field(default_factory=list)
    #: (file, problem) pairs: ambiguous pairings, masks in a format masks cannot use
    problems: list[tuple[Path, str]] = field(default_factory=list)


def natural_key(text: str) -> tuple:
    """Sort key comparing digit runs as numbers: ``a_2`` < ``a_10``."""
    return tuple(int(part) if part.isdigit() else part for part in _DIGITS.split(text))


def dataset_root(path: str | os.PathLike) -> Path:
    """The dataset root for ``path``: ``path/kaggle_3m`` when that folder exists, else ``path``."""
    path = Path(path)
    if (path / "kaggle_3m").is_dir():
        return path / "kaggle_3m"
    return path


def _walk(root: Path) -> list[Path]:
    files = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        files.extend(Path(folder) / n for n in names if not n.startswith("."))
    return files


def scan(path: str | os.PathLike) -> Scan:
    """Find images, their masks, masks without images and pairing problems under ``path``.

    Raises DataError if ``path`` does not exist or is not a folder.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: folder does not exist")
    if not path.is_dir():
        raise DataError(f"{path}: not a folder")
    root = dataset_root(path)
    images: dict[tuple[Path, str], list[Path]] = {}
    masks: dict[tuple[Path, str], list[Path]] = {}
    problems: list[tuple[Path, str]] = []
    for file in _walk(root):
        suffix = file.suffix.lower()
        if suffix not in IMAGE_SUFFIXES:
            continue
        if file.stem.endswith(_MASK_TAG):
            if suffix not in MASK_SUFFIXES:
                problems.append((file, f"mask format {suffix} is not supported "
                                       f"(use {', '.join(MASK_SUFFIXES)})"))
                continue
            masks.setdefault((file.parent, file.stem[: -len(_MASK_TAG)]), []).append(file)
        else:
            images.setdefault((file.parent, file.stem), []).append(file)

    slices, orphans = [], []
    by_patient: dict[str, list[tuple[Path, Path | None]]] = {}
    for key in sorted(images, key=lambda k: (str(k[0]), natural_key(k[1]))):
        files = sorted(images[key])
        if len(files) > 1:
            problems.append((files[0], "several images share this name: "
                                       + ", ".join(f.name for f in files)))
        found = sorted(masks.get(key, []))
        if len(found) > 1:
            problems.append((found[0], "several masks share this name: "
                                       + ", ".join(f.name for f in found)))
        folder, stem = key
        patient = stem if folder == root else folder.relative_to(root).as_posix()
        by_patient.setdefault(patient, []).append((files[0], found[0] if found else None))
    for key in sorted(masks):
        if key not in images:
            orphans.extend(sorted(masks[key]))

    for patient, pairs in by_patient.items():
        for position, (image, mask) in enumerate(pairs):
            number = _TRAILING_NUMBER.search(image.stem)
            index = int(number.group(1)) if number else position
            slices.append(Slice(image, mask, patient, index, root))
    slices.sort(key=slice_key)
    return Scan(root, slices, orphans, problems)


def slice_key(s: Slice) -> tuple:
    """Sort key of a slice: (patient, index), then the natural order of its file name."""
    return (s.patient, s.index, natural_key(s.image.name))


def find_slices(path: str | os.PathLike) -> list[Slice]:
    """All images under ``path`` (Kaggle layout or generic folder), sorted by (patient, index).

    Images without a mask get ``mask=None`` (``verify`` reports them). Raises DataError if the
    folder does not exist or holds no image.
    """
    found = scan(path)
    if not found.slices:
        raise DataError(f"{found.root}: no images found (expected {', '.join(IMAGE_SUFFIXES)} "
                        "files, with masks named <image>_mask)")
    return found.slices


def patients_of(slices: list[Slice]) -> list[str]:
    """The distinct patients of ``slices``, sorted."""
    return sorted({s.patient for s in slices})
