"""The full LGG dataset (restored once into a cache): counts, clean verify, paper split."""
from __future__ import annotations

import pytest

from mambaseg.data.layout import find_slices
from mambaseg.data.splits import make_split
from mambaseg.data.verify import verify_dataset


@pytest.mark.slow
def test_full_dataset(full_lgg_root):
    slices = find_slices(full_lgg_root)
    assert len(slices) == 3929
    assert len({s.patient for s in slices}) == 110
    assert all(s.mask is not None for s in slices)
    assert [s.index for s in slices[:12]] == list(range(1, 13))  # numeric order

    report = verify_dataset(full_lgg_root, progress=False)
    assert report.ok, report.problems[:10]
    assert (report.patients, report.slices, report.tumour_slices) == (110, 3929, 1373)

    split = make_split(slices, "paper")
    assert [len(split[p]) for p in ("train", "val", "test")] == [3143, 393, 393]
    assert len(set(split["train"]) | set(split["val"]) | set(split["test"])) == 3929
