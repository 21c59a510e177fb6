"""`mambaseg compare` through mambaseg.cli.main: table, --json, -o, and user errors."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from mambaseg.cli import main

PATIENTS = [f"TCGA_XX_{i:04d}" for i in range(8)]
TP_A = [900, 800, 850, 700, 950, 600, 880, 820]   # per patient, fp = fn = 1000 - tp
TP_B = [850, 790, 800, 690, 900, 580, 860, 801]   # A wins on every patient


def summary(folder: Path, tps, patients=PATIENTS) -> Path:
    rows = [{"patient": p, "tp": tp, "fp": 1000 - tp, "fn": 1000 - tp, "dice": tp / 1000,
             "slices": 20} for p, tp in zip(patients, tps)]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "summary.json").write_text(json.dumps({"model": folder.name, "per_patient": rows}))
    return folder


@pytest.fixture
def dirs(tmp_path) -> tuple[Path, Path]:
    return summary(tmp_path / "ulvm_unet_v6", TP_A), summary(tmp_path / "unet", TP_B)


def run(capsys, *args) -> tuple[int, str, str]:
    code = main(["compare", *map(str, args)])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def _listing(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def test_compare_table(capsys, dirs):
    a, b = dirs
    code, out, err = run(capsys, a, b / "summary.json", "--n-boot", 1000)
    assert code == 0, err
    assert "A: ulvm_unet_v6" in out and "B: unet" in out
    mean_a, mean_b = sum(TP_A) / 8000, sum(TP_B) / 8000
    assert f"{mean_a:.4f}" in out and f"{mean_b:.4f}" in out
    assert f"{mean_a - mean_b:+.4f}" in out
    assert "8/0/0" in out and "patients  " in out
    assert "Wilcoxon p" in out and "0.0078" in out        # exact: 2 / 2**8
    assert "verdict: A better" in out and "< 0.05" in out
    assert "1000 resamples, seed 0" in out


def test_compare_json_and_output(capsys, dirs, tmp_path):
    a, b = dirs
    code, out, err = run(capsys, a, b, "--json", "--n-boot", 500, "--seed", 4)
    assert code == 0, err
    r = json.loads(out)
    assert r["n"] == 8 and r["wins"] == 8 and r["n_boot"] == 500 and r["seed"] == 4
    assert r["label_a"] == "ulvm_unet_v6" and r["path_b"] == str(b / "summary.json")
    assert r["p_wilcoxon"] == pytest.approx(2 / 2 ** 8)
    dest = tmp_path / "out" / "cmp.json"
    code, out, err = run(capsys, a, b, "-o", dest, "--n-boot", 500, "--seed", 4)
    assert code == 0, err
    assert json.loads(dest.read_text()) == r
    assert f"wrote {dest}" in out
    before = dest.read_text()
    code, out, err = run(capsys, b, a, "-o", dest)
    assert code == 2 and "already exists" in err and "--overwrite" in err
    assert dest.read_text() == before
    code, out, err = run(capsys, b, a, "-o", dest, "--overwrite", "--n-boot", 200)
    assert code == 0, err
    assert json.loads(dest.read_text())["mean_diff"] == pytest.approx(-r["mean_diff"])
    assert [p for p in _listing(dest.parent)] == ["cmp.json"]    # no temporary files left


def test_compare_help_has_example(capsys):
    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    out = capsys.readouterr().out
    assert "mambaseg compare results/cv/ulvm_unet_v6 results/cv/unet" in out


def _bad(tmp_path, capsys, a, b, *extra) -> str:
    before = _listing(tmp_path)
    code, out, err = run(capsys, a, b, "-o", tmp_path / "result.json", *extra)
    assert code == 2
    assert out == ""
    assert err.startswith("mambaseg compare: error: ")
    assert _listing(tmp_path) == before                      # nothing written
    return err


def test_missing_path(tmp_path, capsys, dirs):
    a, _ = dirs
    err = _bad(tmp_path, capsys, a, tmp_path / "nope")
    assert f"{tmp_path / 'nope'} does not exist" in err


def test_folder_without_summary(tmp_path, capsys, dirs):
    empty = tmp_path / "empty"
    empty.mkdir()
    err = _bad(tmp_path, capsys, empty, dirs[1])
    assert f"{empty} has no summary.json" in err


@pytest.mark.parametrize("content, match", [
    ("{oops", "is not a valid JSON file"),
    ('{"model": "unet", "dice_patient": {"mean": 0.8}}', "has no per_patient table"),
])
def test_bad_summary_file(tmp_path, capsys, dirs, content, match):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "summary.json").write_text(content)
    err = _bad(tmp_path, capsys, dirs[0], bad)
    assert str(bad / "summary.json") in err and match in err


def test_different_patients(tmp_path, capsys, dirs):
    other = PATIENTS[:6] + ["TCGA_YY_0001", "TCGA_YY_0002", "TCGA_YY_0003"]
    c = summary(tmp_path / "other", TP_B + [700], other)
    err = _bad(tmp_path, capsys, dirs[0], c)
    assert "different patients" in err
    assert "2 only in A" in err and "TCGA_XX_0006, TCGA_XX_0007" in err
    assert "3 only in B" in err and "TCGA_YY_0001" in err
    assert str(dirs[0] / "summary.json") in err and str(c / "summary.json") in err


def test_patient_listed_twice(tmp_path, capsys, dirs):
    c = summary(tmp_path / "twice", TP_B + [700], PATIENTS + [PATIENTS[2]])
    err = _bad(tmp_path, capsys, dirs[0], c)
    assert f"{c / 'summary.json'} lists patient {PATIENTS[2]} twice" in err


def test_fewer_than_two_patients(tmp_path, capsys):
    a = summary(tmp_path / "one_a", [900], PATIENTS[:1])
    b = summary(tmp_path / "one_b", [800], PATIENTS[:1])
    err = _bad(tmp_path, capsys, a, b)
    assert "has 1 patient" in err and "at least 2" in err and str(a / "summary.json") in err


def test_bad_n_boot(tmp_path, capsys, dirs):
    err = _bad(tmp_path, capsys, *dirs, "--n-boot", 0)
    assert "--n-boot must be at least 1" in err
