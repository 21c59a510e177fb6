"""Splits: paper (slice-level, equal to scikit-learn), patient, K-fold, JSON files."""
from __future__ import annotations

import json

import pytest
from sklearn.model_selection import train_test_split

from mambaseg.data.layout import find_slices
from mambaseg.data.splits import (make_split, paper_split, patient_folds, patient_split,
                                  resolve_split, save_split)
from mambaseg.errors import DataError, MambasegError

PARTS = ("train", "val", "test")


def _sklearn_paper(items, seed=37):
    train, rest = train_test_split(items, train_size=0.8, random_state=seed)
    val, test = train_test_split(rest, train_size=0.5, random_state=seed)
    return {"train": train, "val": val, "test": test}


@pytest.mark.parametrize("n,seed", [(6, 37), (37, 37), (101, 0), (3929, 37), (3929, 5)])
def test_paper_split_equals_sklearn(fake_slices, n, seed):
    slices = fake_slices(1, n)
    ours = paper_split(list(reversed(slices)), seed)  # input order must not matter
    expected = _sklearn_paper([s.rel for s in slices], seed)
    assert {p: [s.rel for s in ours[p]] for p in PARTS} == expected


def test_paper_split_sizes(fake_slices):
    slices = fake_slices(110, [35] * 109 + [114])  # 3929 slices
    sizes = {p: len(v) for p, v in paper_split(slices).items()}
    assert sizes == {"train": 3143, "val": 393, "test": 393}


def test_paper_split_on_sample_is_reproducible(sample_root):
    slices = find_slices(sample_root)
    a, b = make_split(slices, "paper"), make_split(find_slices(sample_root), "paper")
    assert a == b and [len(a[p]) for p in PARTS] == [49, 6, 7]
    assert a["train"] != make_split(slices, "paper", seed=1)["train"]
    assert a == {"split": "paper", "seed": 37, **_sklearn_paper([s.rel for s in slices])}


def test_patient_split_keeps_patients_apart(fake_slices):
    slices = fake_slices(110, 7)
    parts = patient_split(slices)
    patients = {p: {s.patient for s in parts[p]} for p in PARTS}
    assert [len(patients[p]) for p in PARTS] == [88, 11, 11]
    assert not (patients["train"] & patients["val"] or patients["train"] & patients["test"]
                or patients["val"] & patients["test"])
    assert sorted(s.rel for p in PARTS for s in parts[p]) == sorted(s.rel for s in slices)
    assert patient_split(fake_slices(110, 7)) == parts  # same on a second run
    assert patient_split(slices, seed=3) != parts


def test_patient_split_on_sample(sample_root):
    parts = resolve_split(sample_root, "patient")
    assert [len({s.patient for s in parts[p]}) for p in PARTS] == [1, 1, 1]
    assert sum(len(parts[p]) for p in PARTS) == 62


@pytest.mark.parametrize("k", [3, 5, 10])
def test_kfold_tests_each_patient_once(fake_slices, k):
    slices = fake_slices(23, 3)
    folds = patient_folds(slices, k)
    assert len(folds) == k
    tested = [s.patient for f in folds for s in f["test"] if s.index == 1]
    assert sorted(tested) == sorted({s.patient for s in slices})  # each exactly once
    for f in folds:
        pats = {p: {s.patient for s in f[p]} for p in PARTS}
        assert all(pats[p] for p in PARTS)
        assert not (pats["train"] & pats["val"] or pats["train"] & pats["test"]
                    or pats["val"] & pats["test"])
        assert sum(len(f[p]) for p in PARTS) == len(slices)


def test_kfold_needs_patient_split_and_three_folds(fake_slices):
    with pytest.raises(MambasegError, match="--split patient"):
        make_split(fake_slices(10, 2), "paper", folds=5)
    with pytest.raises(MambasegError, match="at least 2"):
        make_split(fake_slices(10, 2), "patient", folds=1)
    with pytest.raises(DataError, match="11 folds need at least 11 patients, found 10"):
        make_split(fake_slices(10, 2), "patient", folds=11)


def test_kfold_validation_comes_from_training_patients(fake_slices):
    slices = fake_slices(110, 2)
    folds = patient_folds(slices, 5)
    n = [{p: len({s.patient for s in f[p]}) for p in PARTS} for f in folds]
    assert [x["test"] for x in n] == [22] * 5
    assert [x["val"] for x in n] == [11] * 5 and [x["train"] for x in n] == [77] * 5
    assert patient_folds(slices, 5) == folds  # seeded


def test_folds_file_with_a_patient_in_two_folds(sample_root, tmp_path):
    data = make_split(find_slices(sample_root), "patient", folds=3)
    moved = data["folds"][1]["test"][0]
    data["folds"][0]["test"].append(moved)
    data["folds"][0]["train"] = [r for r in data["folds"][0]["train"] if r != moved]
    (tmp_path / "f.json").write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"patient .* is tested in folds 0 and 1|in both"):
        resolve_split(sample_root, str(tmp_path / "f.json"), fold=0)


def test_split_file_round_trip(sample_root, tmp_path):
    slices = find_slices(sample_root)
    path = save_split(make_split(slices, "patient", seed=4), tmp_path / "s.json")
    with pytest.raises(MambasegError, match="exists"):
        save_split({}, path)
    parts = resolve_split(sample_root, str(path))
    assert parts == resolve_split(sample_root, "patient", seed=4)
    assert all(s.mask is not None for p in PARTS for s in parts[p])


def test_folds_file_and_fold_choice(sample_root, tmp_path):
    path = save_split(make_split(find_slices(sample_root), "patient", folds=3), tmp_path / "f.json")
    tests = [{s.patient for s in resolve_split(sample_root, str(path), fold=i)["test"]}
             for i in range(3)]
    assert len(set.union(*tests)) == 3
    with pytest.raises(MambasegError, match="--fold"):
        resolve_split(sample_root, str(path))
    with pytest.raises(MambasegError, match="out of range"):
        resolve_split(sample_root, str(path), fold=3)


def test_split_file_with_missing_images(sample_root, tmp_path):
    data = make_split(find_slices(sample_root), "paper")
    data["test"] += ["NOPE/NOPE_1.tif", "NOPE/NOPE_2.tif"]
    (tmp_path / "s.json").write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"2 listed image\(s\) not found") as err:
        resolve_split(sample_root, str(tmp_path / "s.json"))
    assert "NOPE/NOPE_1.tif" in str(err.value) and "NOPE/NOPE_2.tif" in str(err.value)


def test_split_file_overlap_and_bad_files(sample_root, tmp_path):
    data = make_split(find_slices(sample_root), "paper")
    data["val"].append(data["train"][0])
    (tmp_path / "s.json").write_text(json.dumps(data))
    with pytest.raises(DataError, match="in both"):
        resolve_split(sample_root, str(tmp_path / "s.json"))
    (tmp_path / "bad.json").write_text('{"train": []}')
    with pytest.raises(DataError, match="needs lists"):
        resolve_split(sample_root, str(tmp_path / "bad.json"))
    with pytest.raises(DataError, match="not found"):
        resolve_split(sample_root, str(tmp_path / "absent.json"))
