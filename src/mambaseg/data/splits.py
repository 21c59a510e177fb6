"""Train / validation / test splits: the paper's slice-level split and patient-level splits.

A split is ``{"train": [rel, ...], "val": [...], "test": [...]}``, each entry an image path
relative to the dataset root (``Slice.rel``). K-fold splits are ``{"folds": [split, ...]}``.
Files may carry metadata keys (``split``, ``seed``, ``counts``). This module is the one reader
of split files: ``load_split`` (the checked JSON), ``split_rels`` (a part's paths, without the
dataset) and ``resolve_split`` (the ``Slice`` records of each part).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from mambaseg.data.layout import Slice, find_slices, slice_key
from mambaseg.errors import DataError, MambasegError
from mambaseg.files import write_json

PARTS = ("train", "val", "test")
SPLITS = ("paper", "patient")
DEFAULT_SEED = 37


def _shuffle_split(n: int, train_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, test) exactly as scikit-learn's ``train_test_split(range(n),
    train_size=train_size, random_state=seed)`` (ShuffleSplit) returns them."""
    n_train = math.floor(train_size * n)
    n_test = n - n_train
    perm = np.random.RandomState(seed).permutation(n)
    return perm[n_test: n_test + n_train], perm[:n_test]


def paper_split(slices: list[Slice], seed: int = DEFAULT_SEED) -> dict[str, list[Slice]]:
    """The paper's slice-level split: 80 % train, then the rest halved into val and test.

    Over the slices sorted by (patient, slice number), this is exactly
    ``train, rest = train_test_split(s, train_size=0.8, random_state=seed)`` then
    ``val, test = train_test_split(rest, train_size=0.5, random_state=seed)`` (3143/393/393 on the
    full dataset), reimplemented so scikit-learn is not needed. The original code listed files with
    an unsorted glob, so its exact split cannot be recovered; this is the reproducible version.
    Patients do appear in several parts (as in the paper).
    """
    ordered = sorted(slices, key=slice_key)
    if len(ordered) < 6:
        raise DataError(f"the paper split needs at least 6 slices, found {len(ordered)}")
    train, rest = _shuffle_split(len(ordered), 0.8, seed)
    val, test = _shuffle_split(len(rest), 0.5, seed)
    return {"train": [ordered[i] for i in train],
            "val": [ordered[rest[i]] for i in val],
            "test": [ordered[rest[i]] for i in test]}


def _by_patient(slices: list[Slice], patients: list[str]) -> list[Slice]:
    chosen = set(patients)
    return sorted((s for s in slices if s.patient in chosen), key=slice_key)


def _shuffled_patients(slices: list[Slice], seed: int) -> list[str]:
    patients = sorted({s.patient for s in slices})
    return [patients[i] for i in np.random.RandomState(seed).permutation(len(patients))]


def patient_split(slices: list[Slice], seed: int = DEFAULT_SEED,
                  val: float = 0.1, test: float = 0.1) -> dict[str, list[Slice]]:
    """Patient-level split: shuffled patients, ``test`` and ``val`` fractions (at least one
    patient each), the rest train. No patient is in two parts."""
    patients = _shuffled_patients(slices, seed)
    if len(patients) < 3:
        raise DataError(f"a patient split needs at least 3 patients, found {len(patients)}")
    n_test = max(1, round(test * len(patients)))
    n_val = max(1, round(val * len(patients)))
    if n_test + n_val >= len(patients):
        n_test = n_val = 1
    return {"train": _by_patient(slices, patients[n_test + n_val:]),
            "val": _by_patient(slices, patients[n_test: n_test + n_val]),
            "test": _by_patient(slices, patients[:n_test])}


def patient_folds(slices: list[Slice], folds: int, seed: int = DEFAULT_SEED,
                  val: float = 0.1) -> list[dict[str, list[Slice]]]:
    """Patient-level K-fold: shuffled patients cut into K groups; fold i tests on group i and
    carves its validation patients (``val`` of all patients, at least one) out of the other
    groups, which train on the rest. Every patient is in exactly one test part across the
    folds, and no fold chooses anything on its test patients."""
    patients = _shuffled_patients(slices, seed)
    if folds < 2:
        raise MambasegError(f"--folds must be at least 2, got {folds}")
    if len(patients) < folds:
        raise DataError(f"{folds} folds need at least {folds} patients, found {len(patients)}")
    groups = [list(g) for g in np.array_split(np.array(patients, dtype=object), folds)]
    out = []
    for i in range(folds):
        rest = [p for k, g in enumerate(groups) if k != i for p in g]
        if len(rest) < 2:
            raise DataError(f"{folds} folds of {len(patients)} patients leave fold {i} fewer "
                            "than 2 patients for training and validation")
        n_val = min(len(rest) - 1, max(1, round(val * len(patients))))
        order = np.random.RandomState(seed + 1 + i).permutation(len(rest))
        val_p = [rest[j] for j in order[:n_val]]
        train_p = [rest[j] for j in order[n_val:]]
        out.append({"train": _by_patient(slices, train_p), "val": _by_patient(slices, val_p),
                    "test": _by_patient(slices, groups[i])})
    return out


def check_folds(data: dict, patient_of, path: str | os.PathLike = "split") -> None:
    """A K-fold split keeps patients apart: within a fold each patient is in one part, and each
    patient is tested by at most one fold (``patient_of(rel)`` names a path's patient).
    DataError listing every patient that is not."""
    tested: dict[str, int] = {}
    problems: list[str] = []
    for i, fold in enumerate(data["folds"]):
        where: dict[str, str] = {}
        for part in PARTS:
            for p in {patient_of(r) for r in fold[part]}:
                if p in where and where[p] != part:
                    problems.append(f"fold {i}: patient {p} is in both '{where[p]}' and '{part}'")
                where[p] = part
        for p in {patient_of(r) for r in fold["test"]}:
            if p in tested:
                problems.append(f"patient {p} is tested in folds {tested[p]} and {i}")
            tested[p] = i
    if problems:
        shown = "\n  ".join(problems[:10]) + (f"\n  ... and {len(problems) - 10} more"
                                              if len(problems) > 10 else "")
        raise DataError(f"{path}: patients appear in two folds or parts:\n  {shown}")


def _rels(split: dict[str, list[Slice]]) -> dict[str, list[str]]:
    return {part: [s.rel for s in split[part]] for part in PARTS}


def make_split(slices: list[Slice], split: str = "paper", seed: int | None = None,
               folds: int | None = None) -> dict:
    """A JSON-ready split of ``slices``: ``{"split", "seed", "train", "val", "test"}``, or
    ``{"split", "seed", "folds": [...]}`` with ``folds`` (patient split only)."""
    seed = DEFAULT_SEED if seed is None else seed
    if split not in SPLITS:
        raise MambasegError(f"unknown split {split!r}: choose {' or '.join(SPLITS)}")
    if folds is not None:
        if split != "patient":
            raise MambasegError("--folds needs --split patient (the paper split is slice-level)")
        return {"split": split, "seed": seed,
                "folds": [_rels(f) for f in patient_folds(slices, folds, seed)]}
    parts = paper_split(slices, seed) if split == "paper" else patient_split(slices, seed)
    return {"split": split, "seed": seed, **_rels(parts)}


def save_split(data: dict, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write a split as JSON atomically; refuse to replace a file unless ``overwrite``."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise MambasegError(f"{path}: file exists (pass --overwrite to replace it)")
    return write_json(path, data, indent=1)


def load_split(path: str | os.PathLike) -> dict:
    """Read a split JSON file and check its structure (not the files it lists)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: split file not found (use paper, patient or a JSON file)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not a readable split JSON file ({exc})") from None
    splits = data.get("folds") if isinstance(data, dict) else None
    if not isinstance(data, dict) or (splits is None and not all(p in data for p in PARTS)):
        raise DataError(f"{path}: a split file needs lists 'train', 'val' and 'test' (or 'folds')")
    for i, part_map in enumerate(splits if splits is not None else [data]):
        where = f"fold {i}" if splits is not None else "split"
        if not isinstance(part_map, dict) or not all(
                isinstance(part_map.get(p), list) and all(isinstance(r, str) for r in part_map[p])
                for p in PARTS):
            raise DataError(f"{path}: {where} needs lists of paths 'train', 'val' and 'test'")
    return data


def _fold(data: dict, path: str | os.PathLike, fold: int | None) -> dict[str, list[str]]:
    """The parts of a loaded split file: fold ``fold`` of a K-fold file, else the split."""
    if "folds" in data:
        n = len(data["folds"])
        if fold is None:
            raise MambasegError(f"{path} holds {n} folds: choose one with --fold 0..{n - 1}")
        if not 0 <= fold < n:
            raise MambasegError(f"--fold {fold} is out of range: {path} holds folds 0..{n - 1}")
        data = data["folds"][fold]
    elif fold is not None:
        raise MambasegError(f"--fold given but {path} holds a single split, not folds")
    return {part: list(data[part]) for part in PARTS}


def split_rels(path: str | os.PathLike, fold: int | None = None) -> dict[str, list[str]]:
    """The image paths (``Slice.rel``) of each part of the split file ``path`` (fold ``fold``
    of a K-fold file), checked as ``load_split`` checks them. Reads the file only: works
    without the dataset (the report uses it)."""
    return _fold(load_split(path), path, fold)


def _from_file(root: Path, path: Path, fold: int | None) -> dict[str, list[Slice]]:
    data = load_split(path)
    known = {s.rel: s for s in find_slices(root)}
    if "folds" in data:
        check_folds(data, lambda r: known[r].patient if r in known else r.rsplit("/", 1)[0], path)
    data = _fold(data, path, fold)
    missing = sorted({r for p in PARTS for r in data[p] if r not in known})
    if missing:
        shown = "\n  ".join(missing[:10]) + (f"\n  ... and {len(missing) - 10} more"
                                             if len(missing) > 10 else "")
        raise DataError(f"{path}: {len(missing)} listed image(s) not found under {root}:\n  {shown}")
    seen: dict[str, str] = {}
    for part in PARTS:
        for rel in data[part]:
            if rel in seen and seen[rel] != part:
                raise DataError(f"{path}: {rel} is in both '{seen[rel]}' and '{part}'")
            seen[rel] = part
    return {part: [known[r] for r in data[part]] for part in PARTS}


def resolve_split(root: str | os.PathLike, split: str, seed: int | None = None,
                  fold: int | None = None) -> dict[str, list[Slice]]:
    """The slices of each part: ``split`` is ``paper``, ``patient`` or a split JSON file.

    ``seed`` applies to ``paper``/``patient``; ``fold`` picks a fold of a K-fold file. Every
    listed image must exist and have a mask (DataError lists those that do not).
    """
    root = Path(root)
    if split in SPLITS:
        if fold is not None:
            raise MambasegError(f"--fold needs a K-fold split file (make one with 'mambaseg data "
                                f"split {root} --split patient --folds K -o folds.json')")
        slices = find_slices(root)
        seed = DEFAULT_SEED if seed is None else seed
        parts = paper_split(slices, seed) if split == "paper" else patient_split(slices, seed)
    else:
        parts = _from_file(root, Path(split), fold)
    no_mask = [s.image for p in PARTS for s in parts[p] if s.mask is None]
    if no_mask:
        shown = "\n  ".join(str(p) for p in no_mask[:10])
        raise DataError(f"{len(no_mask)} image(s) have no mask (run 'mambaseg data verify "
                        f"{root}'):\n  {shown}")
    return parts
