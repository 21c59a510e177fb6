"""Cross-validation end to end on the bundled sample (3 patients, 3 folds, 1 epoch on the CPU):
files, the out-of-fold result against the folds' own summaries, resuming, bad input."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from mambaseg.cli import main
from mambaseg.data.layout import find_slices
from mambaseg.data.splits import make_split
from mambaseg import metrics as M
from mambaseg.inference.evaluate import METRIC_KEYS
from mambaseg.inference.predictions import load_predictions
from mambaseg.training.crossval import CANDIDATES, best_epoch_of, score_variants
from mambaseg.inference.postprocess import PostProcess

SAMPLE = Path(__file__).resolve().parents[2] / "examples" / "lgg-sample"

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["--model", "ulvm_unet_v2", "--preset", "recommended", "--epochs", "1",
        "--batch-size", "8", "--device", "cpu", "--no-progress"]


def _cv(*args: str) -> int:
    return main(["crossval", *args])


@pytest.fixture(scope="module")
def cv_dir(tmp_path_factory) -> Path:
    """One finished 3-fold cross-validation of the sample, shared by the tests that only read."""

    out = tmp_path_factory.mktemp("cv") / "v2"
    assert _cv(*TINY, "--data", str(SAMPLE), "--folds", "3", "-o", str(out)) == 0
    return out


def test_files_and_split(cv_dir, sample_root):
    for name in ("crossval.json", "split.json", "summary.json", "predictions.npz"):
        assert (cv_dir / name).is_file(), name
    for i in range(3):
        for name in ("config.json", "metrics.jsonl", "summary.json", "predictions.npz"):
            assert (cv_dir / f"fold_{i}" / name).is_file(), (i, name)
    split = json.loads((cv_dir / "split.json").read_text())
    assert split == make_split(find_slices(sample_root), "patient", folds=3)  # data split's


def test_oof_summary_is_the_folds_put_together(cv_dir):
    summary = json.loads((cv_dir / "summary.json").read_text())
    for key in METRIC_KEYS:
        assert key in summary, key
    assert summary["n_patients"] == 3 and summary["n_slices"] == 62 and summary["n_folds"] == 3
    folds = [json.loads((cv_dir / f"fold_{i}" / "summary.json").read_text()) for i in range(3)]
    # every patient exactly once, predicted by the fold that tested it
    fold_patients = [p["patient"] for f in folds for p in f["per_patient"]]
    assert sorted(fold_patients) == sorted(p["patient"] for p in summary["per_patient"])
    # the raw OOF per-patient Dice is the mean of the folds' per-patient Dice
    raw = np.mean([p["dice"] for f in folds for p in f["per_patient"]])
    assert summary["without_postprocess"]["dice_patient"] == pytest.approx(raw, abs=1e-12)
    # the OOF predictions are the folds' predictions, slice by slice
    oof = load_predictions(cv_dir / "predictions.npz")
    index = {r: i for i, r in enumerate(oof["rel"])}
    for i in range(3):
        fold = load_predictions(cv_dir / f"fold_{i}" / "predictions.npz")
        rows = [index[r] for r in fold["rel"]]
        np.testing.assert_array_equal(oof["masks"][rows], fold["masks"])
    assert [r["fold"] for r in summary["folds"]] == [0, 1, 2]
    assert summary["folds"][0]["dice_patient"] == folds[0]["dice_patient"]["mean"]
    chosen = max(summary["postprocess_variants"], key=lambda v: v["dice_patient"])
    assert summary["dice_patient"]["mean"] == pytest.approx(chosen["dice_patient"], abs=1e-12)


def test_resume_runs_only_the_folds_left(tmp_path, sample_root, capsys):
    out = tmp_path / "cv"
    assert _cv(*TINY, "--data", str(sample_root), "--folds", "3", "-o", str(out),
               "--fold", "1") == 0
    assert "folds still to do: 0, 2" in capsys.readouterr().out
    assert not (out / "summary.json").exists()
    stamp = (out / "fold_1" / "summary.json").stat().st_mtime_ns
    assert _cv("-o", str(out), "--resume", "--no-progress", "--fold", "0") == 0
    assert _cv("-o", str(out), "--resume", "--no-progress") == 0
    printed = capsys.readouterr().out
    assert "to do: 2" in printed and "training ulvm_unet_v2 in" in printed
    assert (out / "fold_1" / "summary.json").stat().st_mtime_ns == stamp  # not redone
    assert (out / "summary.json").is_file()
    # a resumed run keeps its settings
    assert _cv("-o", str(out), "--resume", "--lr", "0.5") == 2
    assert "keeps its settings" in capsys.readouterr().err


def test_resume_from_folds_saved_without_their_weights(cv_dir, tmp_path, sample_root, capsys):
    """A cross-validation continued elsewhere from its saved small files (no best/, no last/,
    as results/cv keeps them) trains only the missing fold and keeps the others' rows."""
    out = tmp_path / "cv"
    out.mkdir()
    for name in ("crossval.json", "split.json"):
        shutil.copy(cv_dir / name, out / name)
    for i in (0, 1):
        (out / f"fold_{i}").mkdir()
        for name in ("config.json", "metrics.jsonl", "summary.json", "predictions.npz"):
            shutil.copy(cv_dir / f"fold_{i}" / name, out / f"fold_{i}" / name)
    assert _cv("-o", str(out), "--resume", "--no-progress") == 0
    assert "to do: 2 " in capsys.readouterr().out
    a = json.loads((cv_dir / "summary.json").read_text())["folds"]
    b = json.loads((out / "summary.json").read_text())["folds"]
    for key in ("dice_patient", "best_epoch", "best_val", "epochs"):
        assert [r[key] for r in b[:2]] == [r[key] for r in a[:2]], key
    assert b[2]["best_epoch"] == 1


@pytest.mark.parametrize("select, expected", [("dice_patient", 2), ("dice", 4), (None, 4)])
def test_best_epoch_of_a_history_follows_the_runs_selection(tmp_path, select, expected):
    history = [{"epoch": 1, "val_dice": 0.2, "val_dice_patient": 0.5},
               {"epoch": 2, "val_dice": 0.3, "val_dice_patient": 0.7},
               {"epoch": 3, "val_dice": 0.1, "val_dice_patient": 0.7},  # a tie: the first stays
               {"epoch": 4, "val_dice": 0.4, "val_dice_patient": 0.6}]
    config = tmp_path / "config.json"
    config.write_text(json.dumps({} if select is None else {"select": select}))
    assert best_epoch_of(history, config) == expected
    assert best_epoch_of(history, tmp_path / "missing.json") is None
    assert best_epoch_of([], config) is None


def test_parallel_folds_run_in_their_own_processes(cv_dir, tmp_path, sample_root, capsys):
    out = tmp_path / "par"
    assert _cv(*TINY, "--data", str(sample_root), "--folds", "3", "-o", str(out),
               "--parallel", "3") == 0
    assert "(3 at a time)" in capsys.readouterr().out
    a = json.loads((cv_dir / "summary.json").read_text())
    b = json.loads((out / "summary.json").read_text())
    assert [p["patient"] for p in b["per_patient"]] == [p["patient"] for p in a["per_patient"]]
    assert [r["fold"] for r in b["folds"]] == [0, 1, 2]
    assert all((out / f"fold_{i}" / "best").is_dir() for i in range(3))


@pytest.mark.parametrize("extra, message", [
    (["--folds", "1"], "--folds must be at least 2"),
    (["--folds", "4"], "4 folds need at least 4 patients, found 3"),
    (["--folds", "3", "--fold", "3"], "--fold 3 is out of range: the split holds folds 0..2"),
])
def test_bad_fold_numbers(tmp_path, sample_root, capsys, extra, message):
    out = tmp_path / "cv"
    assert _cv(*TINY, "--data", str(sample_root), "-o", str(out), *extra) == 2
    assert message in capsys.readouterr().err
    assert not out.exists() or not (out / "fold_0").exists()


def test_split_with_a_patient_in_two_folds(tmp_path, sample_root, capsys):
    data = make_split(find_slices(sample_root), "patient", folds=3)
    moved = data["folds"][1]["test"][0]
    data["folds"][0]["test"].append(moved)
    data["folds"][0]["train"] = [r for r in data["folds"][0]["train"] if r != moved]
    data["folds"][0]["val"] = [r for r in data["folds"][0]["val"] if r != moved]
    split = tmp_path / "bad.json"
    split.write_text(json.dumps(data))
    out = tmp_path / "cv"
    assert _cv(*TINY, "--data", str(sample_root), "--split", str(split), "-o", str(out)) == 2
    err = capsys.readouterr().err
    assert str(split) in err and "is tested in folds 0 and 1" in err
    assert not out.exists()


def test_refuses_a_folder_in_use_and_an_unknown_model(tmp_path, sample_root, capsys):
    out = tmp_path / "cv"
    out.mkdir()
    (out / "mine.txt").write_text("user data")
    assert _cv(*TINY, "--data", str(sample_root), "-o", str(out)) == 2
    assert "is not empty" in capsys.readouterr().err
    assert (out / "mine.txt").read_text() == "user data"
    assert _cv("--model", "nope", "--data", str(sample_root), "-o", str(tmp_path / "x")) == 2
    assert "nope" in capsys.readouterr().err
    assert _cv("-o", str(tmp_path / "y"), "--resume") == 2
    assert "holds no cross-validation" in capsys.readouterr().err


# ----------------------------------------------------------------------------- post-processing


def test_variants_choose_the_component_filter_on_an_isolated_false_blob():
    truth = np.zeros((4, 16, 16), bool)
    truth[1:3, 4:10, 4:10] = True
    pred = truth.copy()
    pred[0, 13:15, 13:15] = True       # 4 false pixels on a tumour-free slice, far away
    patients = ["P"] * 4
    rows = score_variants(pred, truth, patients)
    by = {json.dumps(r["postprocess"], sort_keys=True): r for r in rows}
    none = by[json.dumps(PostProcess().to_dict(), sort_keys=True)]
    lcc = by[json.dumps(PostProcess(lcc=True).to_dict(), sort_keys=True)]
    assert none["dice_patient"] == pytest.approx(2 * 72 / (2 * 72 + 4))
    assert lcc["dice_patient"] == 1.0 and lcc["fpr_empty"] == 0.0 and none["fpr_empty"] == 0.5
    assert len(rows) == len(CANDIDATES)
    tp, fp, fn = M.dice_counts(pred, truth)
    assert none["dice_global"] == pytest.approx(M.dice_from_counts(tp.sum(), fp.sum(), fn.sum()))
