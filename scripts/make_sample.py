#!/usr/bin/env python3
"""Rebuild the bundled sample `examples/lgg-sample/kaggle_3m/` from the full LGG dataset.

    python scripts/make_sample.py [--shared ../shared/data/lgg] [--dest examples/lgg-sample]

Restores three small patients (20 slices each, with tumour slices) with the dataset's own
`restore.py --only ...`, then re-saves every tif as zlib (deflate) compressed TIFF with the
horizontal predictor (pixel-identical, about a quarter of the size) in the same Kaggle layout,
and filters `data.csv` to those patients. The sample's README.md (credit and license) is kept.
Needs the venv's Python (Pillow, tifffile, numpy).
"""
from __future__ import annotations

import argparse
import csv
import io
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import tifffile

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
from mambaseg.data.io import decode  # noqa: E402
from mambaseg.files import atomic_path  # noqa: E402

PATIENTS = ("TCGA_CS_6290_20000917", "TCGA_HT_7602_19951103", "TCGA_HT_8106_19970727")


def recompress(src: Path, dst: Path) -> None:
    """Re-save one tif as zlib-compressed TIFF and check the pixels are unchanged."""
    arr = decode(src)
    rgb = arr.ndim == 3
    with atomic_path(dst) as tmp:
        tifffile.imwrite(tmp, arr, photometric="rgb" if rgb else "minisblack",
                         compression="zlib", compressionargs={"level": 9},
                         predictor=rgb, metadata=None)
        if not np.array_equal(decode(tmp), arr):
            raise SystemExit(f"{dst}: pixels changed on re-saving")


def filter_csv(src: Path, dst: Path, patients: tuple[str, ...]) -> None:
    """Copy data.csv keeping the header and the rows of ``patients`` (column Patient is the
    folder name without its date)."""
    rows = list(csv.reader(src.read_text().splitlines()))
    keep = {"_".join(p.split("_")[:3]) for p in patients}
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows([rows[0]] + [r for r in rows[1:]
                                                                if r and r[0] in keep])
    with atomic_path(dst) as tmp:
        tmp.write_text(out.getvalue())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data" / "lgg")
    ap.add_argument("--dest", type=Path, default=REPO / "examples" / "lgg-sample")
    a = ap.parse_args()
    out = a.dest / "kaggle_3m"
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, str(a.shared / "restore.py"), tmp,
                        "--only", ",".join(PATIENTS)], check=True)
        src = Path(tmp) / "kaggle_3m"
        if out.exists():
            shutil.rmtree(out)
        for patient in PATIENTS:
            for f in sorted((src / patient).glob("*.tif")):
                recompress(f, out / patient / f.name)
        filter_csv(src / "data.csv", out / "data.csv", PATIENTS)
        shutil.copyfile(src / "README.md", out / "README.md")
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"{out}: {len(PATIENTS)} patients, {size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
