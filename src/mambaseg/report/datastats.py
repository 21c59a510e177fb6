"""Fig. 1's numbers: patients, slices, tumour and tumour-free slices per split part.

Computed with the data package (``mambaseg.data.stats.split_stats``) from the split files saved
in ``results/splits/`` and the dataset's masks (``--data``), then saved as
``results/data_stats.json`` so that later reports need only the results folder.
"""
from __future__ import annotations

import datetime as _dt
import re
from pathlib import Path, PurePosixPath

from mambaseg.data.io import read_mask
from mambaseg.data.layout import find_slices
from mambaseg.data.splits import load_split, resolve_split
from mambaseg.data.stats import split_stats
from mambaseg.errors import DataError
from mambaseg.report.collect import PROTOCOLS, read_json

#: file names inside a results folder
DATA_STATS = "data_stats.json"
SPLITS_DIR = "splits"


def split_path(results_dir: str | Path, protocol: str) -> Path:
    """``RESULTS_DIR/splits/<protocol>.json``."""
    return Path(results_dir) / SPLITS_DIR / f"{protocol}.json"


def patient_of(rel: str) -> str:
    """The patient of a slice path: its folder, or the file stem without the trailing ``_<n>``."""
    p = PurePosixPath(rel)
    if len(p.parts) > 1:
        return p.parent.as_posix()
    return re.sub(r"_\d+$", "", p.stem)


def slice_number(rel: str) -> int:
    """The trailing ``_<n>`` of the file stem (0 if none), for natural ordering."""
    m = re.search(r"_(\d+)$", PurePosixPath(rel).stem)
    return int(m.group(1)) if m else 0


def natural_order(rels: list[str]) -> list[str]:
    """Sort slices by (patient, slice number) so that '_10' follows '_9'."""
    return sorted(rels, key=lambda r: (patient_of(r), slice_number(r), r))


def slice_paths(data: str | Path, rels: list[str]) -> dict[str, tuple[Path, Path]]:
    """(image, mask) of each slice path under the dataset folder ``data``."""
    known = {s.rel: s for s in find_slices(data)}
    missing = [r for r in rels if r not in known or known[r].mask is None]
    if missing:
        raise DataError(f"{len(missing)} slice(s) of the saved splits have no image or mask under {data} "
                        f"(first: {missing[0]}); is --data the dataset the splits were made from?")
    return {r: (known[r].image, known[r].mask) for r in rels}


def tumour_flags(data: str | Path, rels: list[str]) -> dict[str, bool]:
    """Whether each slice's mask has any tumour pixel."""
    paths = slice_paths(data, rels)
    return {rel: bool(read_mask(paths[rel][1]).any()) for rel in rels}


def count_split(data: str | Path, path: Path) -> dict[str, dict[str, int]]:
    """Counts of each part of the split file ``path`` (``split_stats`` of the data package),
    plus how many of a part's patients also appear in another part (0 for a leak-free split)."""
    fold = 0 if "folds" in load_split(path) else None
    parts = resolve_split(data, str(path), fold=fold)
    counts = split_stats(parts)["parts"]
    patients = {part: {s.patient for s in slices} for part, slices in parts.items()}
    out = {}
    for part, c in counts.items():
        elsewhere = set().union(*(p for other, p in patients.items() if other != part))
        out[part] = {"patients": c["patients"], "slices": c["slices"], "tumour": c["tumour"],
                     "tumour_free": c["no_tumour"],
                     "patients_also_in_other_parts": len(patients[part] & elsewhere)}
    return out


def compute_data_stats(results_dir: str | Path, data: str | Path) -> dict:
    """The ``data_stats.json`` document: every saved split's counts, from the masks under
    ``data``. Raises DataError when no split file is saved."""
    files = {p: split_path(results_dir, p) for p in PROTOCOLS if split_path(results_dir, p).is_file()}
    if not files:
        raise DataError(f"no split files in {Path(results_dir) / SPLITS_DIR} (expected paper.json, patient.json)")
    return {
        "format": 1,
        "computed": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "data": str(data),
        "splits": {p: f"{SPLITS_DIR}/{p}.json" for p in files},
        "protocols": {p: count_split(data, path) for p, path in files.items()},
    }


def load_data_stats(results_dir: str | Path) -> dict | None:
    """``RESULTS_DIR/data_stats.json``, or None when absent."""
    path = Path(results_dir) / DATA_STATS
    if not path.is_file():
        return None
    doc = read_json(path)
    if not isinstance(doc, dict) or not isinstance(doc.get("protocols"), dict):
        raise DataError(f"{path}: expected an object with 'protocols'")
    return doc
