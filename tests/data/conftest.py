"""Fixtures for the data tests: small writable copies of the sample, synthetic slices."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mambaseg.data.layout import Slice

PATIENT = "TCGA_CS_6290_20000917"


@pytest.fixture
def sample_copy(sample_root: Path, tmp_path: Path) -> Path:
    """A writable copy of one sample patient (20 slices, 5 with tumour): tmp/kaggle_3m/..."""
    root = tmp_path / "ds" / "kaggle_3m"
    shutil.copytree(sample_root / "kaggle_3m" / PATIENT, root / PATIENT)
    return root


def _fake_slices(patients: int, per_patient: int | list[int]) -> list[Slice]:
    """Slices of fake files (not on disk) for split tests: patient P000.., slices 1..n."""
    counts = per_patient if isinstance(per_patient, list) else [per_patient] * patients
    root = Path("/nonexistent/root")
    out = []
    for p, n in enumerate(counts):
        name = f"P{p:03d}"
        for i in range(1, n + 1):
            image = root / name / f"{name}_{i}.tif"
            out.append(Slice(image, image.with_name(f"{name}_{i}_mask.tif"), name, i, root))
    return out


@pytest.fixture
def fake_slices():
    """``fake_slices(patients, per_patient)`` -> slices of files that do not exist."""
    return _fake_slices
