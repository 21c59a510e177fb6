"""Finding slices: Kaggle layout and generic folders."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mambaseg.data.layout import Slice, dataset_root, find_slices, scan
from mambaseg.errors import DataError

SAMPLE_PATIENTS = ["TCGA_CS_6290_20000917", "TCGA_HT_7602_19951103", "TCGA_HT_8106_19970727"]


def test_sample_pairs_counts_and_patients(sample_root):
    slices = find_slices(sample_root)
    assert len(slices) == 62
    assert sorted({s.patient for s in slices}) == SAMPLE_PATIENTS
    for s in slices:
        assert s.mask is not None and s.mask.is_file()
        assert s.mask.name == s.image.name.replace(".tif", "_mask.tif")
        assert s.image.parent.name == s.patient


def test_sample_slices_in_numeric_order(sample_root):
    slices = find_slices(sample_root)
    first = [s for s in slices if s.patient == SAMPLE_PATIENTS[0]]
    assert [s.index for s in first] == list(range(1, 21))
    names = [s.image.name for s in first]
    assert names.index("TCGA_CS_6290_20000917_2.tif") < names.index("TCGA_CS_6290_20000917_10.tif")
    assert slices == sorted(slices, key=lambda s: (s.patient, s.index))


def test_root_may_be_kaggle_3m_or_its_parent(sample_root):
    assert dataset_root(sample_root) == sample_root / "kaggle_3m"
    a, b = find_slices(sample_root), find_slices(sample_root / "kaggle_3m")
    assert a == b
    assert a[0].rel == "TCGA_CS_6290_20000917/TCGA_CS_6290_20000917_1.tif"
    assert all(s.rel == b[i].rel for i, s in enumerate(a))


def test_slice_is_frozen(sample_root):
    s = find_slices(sample_root)[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.index = 3
    assert Slice(s.image, s.mask, s.patient, s.index) == s  # root is optional, not compared


def _png(path: Path, value: int = 0, size=(8, 8), mode="L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = size if mode == "L" else (*size, 3)
    Image.fromarray(np.full(shape, value, np.uint8), mode).save(path)


def test_generic_flat_folder(tmp_path):
    for name in ("b", "a"):
        _png(tmp_path / f"{name}.png", 50, mode="RGB")
        _png(tmp_path / f"{name}_mask.png", 255)
    _png(tmp_path / "c.jpg", 50, mode="RGB")  # jpg image, png mask
    _png(tmp_path / "c_mask.png", 0)
    (tmp_path / "notes.txt").write_text("ignored")
    slices = find_slices(tmp_path)
    assert [s.patient for s in slices] == ["a", "b", "c"]
    assert all(s.mask is not None for s in slices)
    assert slices[2].image.suffix == ".jpg" and slices[2].mask.suffix == ".png"
    assert slices[0].rel == "a.png"


def test_generic_nested_folders_patient_is_folder(tmp_path):
    for i in (10, 2, 1):
        _png(tmp_path / "case7" / f"img_{i}.webp", 9, mode="RGB")
        _png(tmp_path / "case7" / f"img_{i}_mask.tif", 1)
    _png(tmp_path / "case3" / "scan.tiff", 9, mode="RGB")
    slices = find_slices(tmp_path)
    assert [(s.patient, s.index) for s in slices] == [("case3", 0), ("case7", 1),
                                                      ("case7", 2), ("case7", 10)]
    assert slices[0].mask is None  # image without mask: found, verify reports it
    assert slices[-1].rel == "case7/img_10.webp"


def test_orphan_masks_and_hidden_files(tmp_path):
    _png(tmp_path / "p" / "x_1.png", 1, mode="RGB")
    _png(tmp_path / "p" / "x_1_mask.png")
    _png(tmp_path / "p" / "x_2_mask.png")
    _png(tmp_path / "p" / ".hidden.png", mode="RGB")
    found = scan(tmp_path)
    assert [s.image.name for s in found.slices] == ["x_1.png"]
    assert [m.name for m in found.orphan_masks] == ["x_2_mask.png"]


def test_missing_or_empty_folder_raises(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        find_slices(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images found"):
        find_slices(tmp_path / "empty")
