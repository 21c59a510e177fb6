"""scripts/flip_tta.py: mirrored test-time augmentation scored on each fold's validation part."""
from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from mambaseg import metrics as M
from mambaseg.data.dataset import load_arrays
from mambaseg.data.layout import find_slices
from mambaseg.data.splits import make_split
from mambaseg.inference.loading import load_checkpoint
from mambaseg.inference.runner import predict_probs
from mambaseg.models import create_model

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("flip_tta", REPO / "scripts" / "flip_tta.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_mirror_equivariant_model_gains_nothing_and_an_asymmetric_one_differs(script):
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    pointwise = torch.nn.Conv2d(3, 1, 1)              # commutes with every mirroring
    probs = script.variant_probs(pointwise, images, batch_size=2, device="cpu")
    torch.testing.assert_close(probs["lr"], probs["none"], atol=1e-6, rtol=0)
    torch.testing.assert_close(probs["all4"], probs["none"], atol=1e-6, rtol=0)
    shifted = torch.nn.Conv2d(3, 1, (1, 3), padding=(0, 1))
    with torch.no_grad():
        shifted.weight.zero_()
        shifted.weight[0, :, 0, 2] = 1.0             # looks one pixel to the right only
    probs = script.variant_probs(shifted, images, batch_size=2, device="cpu")
    assert (probs["lr"] - probs["none"]).abs().max() > 1e-3


def test_scores_the_validation_part_of_each_fold(script, sample_root, tmp_path, capsys):
    slices = find_slices(sample_root)
    split = make_split(slices, "patient", folds=3)
    cv, weights = tmp_path / "cv", tmp_path / "w"
    cv.mkdir()
    (cv / "split.json").write_text(json.dumps(split))
    torch.manual_seed(0)
    for i in range(3):
        (cv / f"fold_{i}").mkdir()
        (cv / f"fold_{i}" / "config.json").write_text(json.dumps({"channels": "all"}))
        create_model("ulvm_unet_v2").save_pretrained(weights / f"fold_{i}")
    out = tmp_path / "tta.json"
    assert script.main([str(cv), "--weights", str(weights), "--data", str(sample_root),
                        "--out", str(out), "--batch-size", "8"]) == 0
    saved = json.loads(out.read_text())
    by_rel = {s.rel: s for s in slices}
    for i, row in enumerate(saved["folds"]):
        part = [by_rel[r] for r in split["folds"][i]["val"]]
        assert row["slices"] == len(part) and row["patients"] == len({s.patient for s in part})
        # the plain score, independently: the fold model's masks, Dice per patient
        net = load_checkpoint(weights / f"fold_{i}", "cpu")
        images, masks = load_arrays(part, progress=False)
        pred = (predict_probs(net, images)[:, 0] > 0.5).numpy()
        tp, fp, fn = M.dice_counts(pred, masks[:, 0].numpy())
        want = M.dice_patient(tp, fp, fn, [s.patient for s in part])["mean"]
        assert row["none"] == pytest.approx(want, abs=1e-12)
    for v in script.VARIANTS:
        assert saved["mean"][v] == pytest.approx(np.mean([r[v] for r in saved["folds"]]))
    assert "mean over folds: none" in capsys.readouterr().out


def test_a_dataset_without_the_validation_slices_is_one_clear_error(script, sample_root,
                                                                     tmp_path, capsys):
    split = make_split(find_slices(sample_root), "patient", folds=3)
    cv = tmp_path / "cv"
    cv.mkdir()
    (cv / "split.json").write_text(json.dumps(split))
    # a dataset holding only a patient that fold 0 tests, not the one it validates on
    kept = split["folds"][0]["test"][0].split("/")[0]
    partial = tmp_path / "data"
    shutil.copytree(sample_root / "kaggle_3m" / kept, partial / "kaggle_3m" / kept)
    assert script.main([str(cv), "--weights", str(tmp_path / "w"), "--data", str(partial),
                        "--out", str(tmp_path / "o.json")]) == 2
    err = capsys.readouterr().err
    assert str(partial) in err and "validation slices of fold 0 are missing" in err
    assert not (tmp_path / "o.json").exists()
