"""`verify_dataset`: one test per kind of problem, on broken copies of the sample."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile

from mambaseg.data.verify import verify_dataset

P = "TCGA_CS_6290_20000917"


def _file(root: Path, n: int, mask: bool = False) -> Path:
    return root / P / f"{P}_{n}{'_mask' if mask else ''}.tif"


def _only_problem(root: Path, name: str, words: str) -> str:
    report = verify_dataset(root, progress=False)
    assert not report.ok
    assert len(report.problems) == 1, report.problems
    problem = report.problems[0]
    assert name in problem and words in problem, problem
    return problem


def test_clean_sample_passes(sample_root):
    report = verify_dataset(sample_root, progress=False)
    assert report.ok, report.problems
    assert (report.patients, report.slices, report.tumour_slices) == (3, 62, 25)
    assert "3 patients, 62 slices, 25 with tumour" in report.summary()


def test_clean_copy_passes(sample_copy):
    report = verify_dataset(sample_copy, progress=False)
    assert report.ok and (report.patients, report.slices, report.tumour_slices) == (1, 20, 5)


def test_image_without_mask(sample_copy):
    _file(sample_copy, 3, mask=True).unlink()
    _only_problem(sample_copy, f"{P}_3.tif", "image without mask")


def test_mask_without_image(sample_copy):
    _file(sample_copy, 4).unlink()
    _only_problem(sample_copy, f"{P}_4_mask.tif", "mask without image")


def test_unreadable_file(sample_copy):
    _file(sample_copy, 5).write_bytes(b"not a tiff at all")
    _only_problem(sample_copy, f"{P}_5.tif", "unreadable")


def test_truncated_file(sample_copy):
    f = _file(sample_copy, 6, mask=True)
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    _only_problem(sample_copy, f"{P}_6_mask.tif", "truncated")


def test_size_mismatch(sample_copy):
    tifffile.imwrite(_file(sample_copy, 7, mask=True), np.zeros((128, 256), np.uint8))
    _only_problem(sample_copy, f"{P}_7_mask.tif", "256x128")


def test_unexpected_channel_count(sample_copy):
    tifffile.imwrite(_file(sample_copy, 8), np.zeros((256, 256), np.uint8))
    _only_problem(sample_copy, f"{P}_8.tif", "1 channel(s), expected 3")


def test_mask_values(sample_copy):
    mask = np.zeros((256, 256), np.uint8)
    mask[10:20, 10:20] = 127
    tifffile.imwrite(_file(sample_copy, 9, mask=True), mask)
    _only_problem(sample_copy, f"{P}_9_mask.tif", "127")


def test_empty_folder(tmp_path):
    (tmp_path / "kaggle_3m").mkdir()
    _only_problem(tmp_path, "kaggle_3m", "empty")


def test_missing_folder(tmp_path):
    _only_problem(tmp_path / "gone", "gone", "does not exist")


def test_every_problem_reported_at_once(sample_copy):
    _file(sample_copy, 3, mask=True).unlink()
    _file(sample_copy, 4).unlink()
    _file(sample_copy, 5).write_bytes(b"junk")
    tifffile.imwrite(_file(sample_copy, 8), np.zeros((256, 256), np.uint8))
    report = verify_dataset(sample_copy, progress=False)
    assert len(report.problems) == 4
    for n in ("_3.tif", "_4_mask.tif", "_5.tif", "_8.tif"):
        assert any(f"{P}{n}" in p for p in report.problems), (n, report.problems)


def test_non_finite_multi_page_and_more_listed_at_once(sample_copy):
    nan = np.random.default_rng(0).random((256, 256, 3), dtype=np.float32)
    nan[20:40, 20:40] = np.nan
    tifffile.imwrite(_file(sample_copy, 3), nan, photometric="rgb")
    tifffile.imwrite(_file(sample_copy, 4), np.zeros((4, 256, 256), np.uint8),
                     photometric="minisblack")
    tifffile.imwrite(_file(sample_copy, 5, mask=True), np.zeros((2, 256, 256), np.uint8),
                     photometric="minisblack")
    problems = verify_dataset(sample_copy, progress=False).problems
    assert sorted(problems) == sorted([
        f"{_file(sample_copy, 3)}: non-finite pixels (NaN/Inf): 400 of 65536",
        f"{_file(sample_copy, 3)}: image pixels are float32, expected uint8",
        f"{_file(sample_copy, 4)}: multi-page image (4 pages): mambaseg reads single 2-D slices",
        f"{_file(sample_copy, 5, mask=True)}: multi-page image (2 pages): mambaseg reads single "
        "2-D slices"])


def test_verify_cli_lists_non_finite_pixels(sample_copy, capsys):
    from mambaseg.cli import main

    nan = np.zeros((256, 256, 3), np.float32)
    nan[0, 0, 1] = np.inf
    tifffile.imwrite(_file(sample_copy, 3), nan, photometric="rgb")
    assert main(["data", "verify", str(sample_copy), "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert f"{_file(sample_copy, 3)}: non-finite pixels (NaN/Inf): 1 of 65536" in out
