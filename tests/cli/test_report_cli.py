"""`mambaseg report` on the command line: a folder without runs is an error."""
from __future__ import annotations

import json

from mambaseg.cli import main


def test_report_on_a_folder_without_runs_exits_2(tmp_path, capsys):
    empty = tmp_path / "empty"
    (empty / "paper" / "unet").mkdir(parents=True)          # folders, but no run files
    (empty / "cv").mkdir()
    assert main(["report", str(empty)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mambaseg report: error: ") and "holds no runs to report" in err
    assert sorted(p.name for p in empty.iterdir()) == ["cv", "paper"]    # nothing written


def test_report_on_a_missing_folder_exits_2(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "results folder not found" in capsys.readouterr().err


def test_report_with_one_run_writes_to_output(tmp_path, capsys):
    results = tmp_path / "results"
    (results / "patient" / "unet").mkdir(parents=True)
    (results / "patient" / "unet" / "config.json").write_text(json.dumps({"model": "unet"}))
    assert main(["report", str(results), "-o", str(tmp_path / "out"), "--quiet"]) == 0
    assert (tmp_path / "out" / "README.md").is_file() and not (results / "README.md").exists()
