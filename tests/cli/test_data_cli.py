"""`mambaseg data verify|stats|split` through `mambaseg.cli.main`."""
from __future__ import annotations

import json
import shutil

import pytest

import mambaseg.cli as cli


@pytest.fixture(autouse=True)
def only_data_command(monkeypatch):
    """Build the parser with the `data` subcommand only: these tests do not depend on the
    other subcommand modules."""
    monkeypatch.setattr(cli, "SUBCOMMANDS", ("data",))


def test_verify_clean_sample(sample_root, capsys):
    assert cli.main(["data", "verify", str(sample_root)]) == 0
    assert "3 patients, 62 slices, 25 with tumour" in capsys.readouterr().out


def test_verify_broken_copy_exits_1(sample_root, tmp_path, capsys):
    patient = "TCGA_HT_8106_19970727"
    shutil.copytree(sample_root / "kaggle_3m" / patient, tmp_path / patient)
    (tmp_path / patient / f"{patient}_11_mask.tif").unlink()
    (tmp_path / patient / f"{patient}_12.tif").write_bytes(b"junk")
    assert cli.main(["data", "verify", str(tmp_path), "--no-progress"]) == 1
    out, err = capsys.readouterr()
    assert f"{patient}_11.tif: image without mask" in out
    assert f"{patient}_12.tif: unreadable" in out
    assert "2 problem(s)" in err


def test_verify_missing_or_file_path_is_a_usage_error(tmp_path, capsys):
    # exit status 1 is kept for "the check found problems"; a PATH that is not there is 2
    assert cli.main(["data", "verify", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mambaseg data: error: ") and "nowhere: folder does not exist" in err
    (tmp_path / "file.txt").write_text("x")
    assert cli.main(["data", "verify", str(tmp_path / "file.txt")]) == 2
    assert "file.txt: not a folder" in capsys.readouterr().err


def test_verify_empty_folder_is_a_problem_found(tmp_path, capsys):
    assert cli.main(["data", "verify", str(tmp_path)]) == 1
    assert "folder is empty" in capsys.readouterr().out


@pytest.mark.parametrize("old", [False, True])
def test_split_seed_and_its_old_spelling(sample_root, tmp_path, capsys, old):
    out = tmp_path / "split.json"
    flag = "--seed" if old else "--split-seed"
    assert cli.main(["data", "split", str(sample_root), "--split", "patient", flag, "1",
                     "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert ("note: --seed is deprecated; use --split-seed" in err) == old
    from mambaseg.data.layout import find_slices
    from mambaseg.data.splits import make_split

    assert json.loads(out.read_text()) == make_split(find_slices(sample_root), "patient", seed=1)
    assert cli.main(["data", "stats", str(sample_root), "--split", "patient", flag, "1"]) == 0
    assert ("note: --seed is deprecated" in capsys.readouterr().err) == old


def test_stats_prints_table_and_writes_png(sample_root, tmp_path, capsys):
    out = tmp_path / "stats.png"
    assert cli.main(["data", "stats", str(sample_root), "--split", "paper", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "train" in text and "test" in text and "total" in text
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_split_writes_json_and_refuses_overwrite(sample_root, tmp_path, capsys):
    out = tmp_path / "split.json"
    assert cli.main(["data", "split", str(sample_root), "--split", "paper", "-o", str(out)]) == 0
    data = json.loads(out.read_text())
    assert [len(data[p]) for p in ("train", "val", "test")] == [49, 6, 7]
    assert cli.main(["data", "split", str(sample_root), "-o", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert cli.main(["data", "split", str(sample_root), "--split", "patient", "--seed", "1",
                     "-o", str(out), "--overwrite"]) == 0
    assert json.loads(out.read_text())["split"] == "patient"


def test_split_folds(sample_root, tmp_path, capsys):
    out = tmp_path / "folds.json"
    assert cli.main(["data", "split", str(sample_root), "--split", "patient", "--folds", "3",
                     "-o", str(out)]) == 0
    assert len(json.loads(out.read_text())["folds"]) == 3
    assert "fold 2:" in capsys.readouterr().out
    assert cli.main(["data", "split", str(sample_root), "--folds", "3",
                     "-o", str(tmp_path / "x.json")]) == 2
    assert not (tmp_path / "x.json").exists()


def test_stats_with_missing_split_file_exits_2(sample_root, tmp_path, capsys):
    assert cli.main(["data", "stats", str(sample_root), "--split", str(tmp_path / "n.json")]) == 2
    assert "n.json" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["data"], ["data", "verify"], ["data", "stats"],
                                  ["data", "split"]])
def test_help_ends_with_example(argv, capsys):
    with pytest.raises(SystemExit) as done:
        cli.main([*argv, "--help"])
    assert done.value.code == 0
    assert "example:\n  mambaseg data" in capsys.readouterr().out
