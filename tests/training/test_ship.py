"""training/ship.py: a finished cross-validation shipped as an ensemble of its fold models (one
real 3-fold cross-validation of the bundled sample, 1 epoch on the CPU, shared by the module)."""
from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch

from mambaseg.cli import main
from mambaseg.inference.ensemble import Ensemble, read_manifest
from mambaseg.inference.loading import load_checkpoint
from mambaseg.inference.runner import predict_probs
from mambaseg.training.ship import (default_name, fold_checkpoints, refresh_metrics,
                                    ship_crossval)
from mambaseg.errors import MambasegError

SAMPLE = Path(__file__).resolve().parents[2] / "examples" / "lgg-sample"

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[2]
TINY = ["--model", "ulvm_unet_v2", "--preset", "recommended", "--epochs", "1",
        "--batch-size", "8", "--device", "cpu", "--no-progress"]


@pytest.fixture(scope="module")
def cv_dir(tmp_path_factory) -> Path:

    out = tmp_path_factory.mktemp("cv") / "ulvm_unet_v2"
    assert main(["crossval", *TINY, "--data", str(SAMPLE), "--folds", "3", "-o", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def shipped(cv_dir, tmp_path_factory) -> Path:
    return ship_crossval(cv_dir, tmp_path_factory.mktemp("w") / "ens", default=True)


def _images(sample_root, n=4):
    import numpy as np

    from mambaseg.data.io import read_image

    paths = sorted((sample_root / "kaggle_3m").rglob("*.tif"))
    paths = [p for p in paths if not p.stem.endswith("_mask")][8:8 + n]
    return torch.from_numpy(np.stack([read_image(p) for p in paths])).permute(0, 3, 1, 2)


def test_the_ensemble_is_the_mean_of_the_fold_models(cv_dir, shipped, sample_root):
    ckpts = fold_checkpoints(cv_dir)
    assert ckpts == [cv_dir / f"fold_{i}" / "best" for i in range(3)]
    ens = load_checkpoint(shipped)
    assert isinstance(ens, Ensemble) and len(ens.members) == 3
    for i in range(3):
        cfg = json.loads((shipped / f"fold_{i}" / "config.json").read_text())
        assert cfg["weights_dtype"] == "float16" and cfg["model_name"] == "ulvm_unet_v2"
        assert cfg["metadata"]["crossval"]["fold"] == i
        assert str(cv_dir.parent) not in json.dumps(cfg)       # no paths of the shipping host
    x = _images(sample_root)
    got = predict_probs(ens, x)
    folds = [predict_probs(load_checkpoint(c), x) for c in ckpts]   # fp32 originals
    want = sum(folds) / 3
    assert got.shape == want.shape == (4, 1, 256, 256)
    torch.testing.assert_close(got, want, atol=5e-3, rtol=0)     # fp16 weights
    assert (got - want).abs().mean() < 1e-3


def test_manifest_records_the_cv_result(cv_dir, shipped):
    summary = json.loads((cv_dir / "summary.json").read_text())
    manifest = read_manifest(shipped)
    assert manifest["members"] == ["fold_0", "fold_1", "fold_2"]
    assert manifest["postprocess"] == summary["postprocess"]
    meta = manifest["metadata"]
    cv = meta["metrics"]["cv"]
    assert cv["dice_patient"] == summary["dice_patient"]["mean"]
    assert cv["dice_patient_ci95"] == summary["dice_patient"]["ci95"]
    assert cv["dice_patient_median"] == summary["dice_patient"]["median"]
    assert cv["dice_global"] == summary["dice_global"]["mean"]
    assert cv["n_patients"] == 3 and cv["n_folds"] == 3
    # the validation score: each fold's best validation per-patient Dice, from its history
    best = [max(json.loads(line)["val_dice_patient"] for line in
                (cv_dir / f"fold_{i}" / "metrics.jsonl").read_text().splitlines())
            for i in range(3)]
    assert cv["fold_val_dice_patient"] == best
    assert cv["val_dice_patient"] == pytest.approx(sum(best) / 3, abs=1e-15)
    assert meta["protocol"] == "crossval" and meta["default"] is True
    assert meta["evaluated"].endswith("ulvm_unet_v2/summary.json")
    assert not Path(meta["evaluated"]).is_absolute()
    assert meta["training"]["model"] == "ulvm_unet_v2" and meta["training"]["epochs"] == 1
    assert meta["training"]["lr"] == 3e-4 and meta["training"]["folds"] == 3
    assert meta["data"].startswith("LGG (Buda et al. 2019)")
    assert default_name(cv_dir) == "ulvm_unet_v2_cv3"


def test_chosen_postprocess_and_default_name(cv_dir, tmp_path, monkeypatch):
    from mambaseg.inference.loading import load_shipped_model
    from mambaseg.inference.postprocess import PostProcess
    from mambaseg.models import pretrained

    cv = tmp_path / "cv" / "moved"                     # a copied folder: checkpoints inside it
    shutil.copytree(cv_dir, cv)
    summary = json.loads((cv / "summary.json").read_text())
    summary["postprocess"] = {"lcc": True, "min_volume": 500, "min_area": 0}
    (cv / "summary.json").write_text(json.dumps(summary))
    assert fold_checkpoints(cv) == [cv / f"fold_{i}" / "best" for i in range(3)]
    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", tmp_path / "weights")
    out = ship_crossval(cv, dtype=None)
    assert out == tmp_path / "weights" / "ulvm_unet_v2_cv3"
    assert json.loads((out / "fold_0" / "config.json").read_text())["weights_dtype"] == "float32"
    info = pretrained.shipped_models()["ulvm_unet_v2_cv3"]
    assert info["cv_dice"] == summary["dice_patient"]["mean"] and info["members"] == 3
    assert pretrained.default_shipped() == "ulvm_unet_v2_cv3"
    net = load_shipped_model(None)
    assert isinstance(net, Ensemble)
    assert net.postprocess == PostProcess(lcc=True, min_volume=500)


def test_errors(cv_dir, shipped, tmp_path):
    with pytest.raises(MambasegError, match="exists; pass overwrite"):
        ship_crossval(cv_dir, shipped)
    unfinished = tmp_path / "unfinished"
    shutil.copytree(cv_dir, unfinished)
    (unfinished / "summary.json").unlink()
    with pytest.raises(MambasegError, match="not finished .*--resume"):
        ship_crossval(unfinished, tmp_path / "a")
    broken = tmp_path / "broken"
    shutil.copytree(cv_dir, broken)
    text = (broken / "summary.json").read_text().replace(str(cv_dir), str(broken))
    (broken / "summary.json").write_text(text)                # as if it had run there
    shutil.rmtree(broken / "fold_1" / "best")
    with pytest.raises(MambasegError, match="fold 1's checkpoint is missing"):
        ship_crossval(broken, tmp_path / "b")
    with pytest.raises(MambasegError, match="not a cross-validation folder"):
        ship_crossval(tmp_path, tmp_path / "c")
    assert not any((tmp_path / n).exists() for n in "abc")


def test_overwrite_and_the_script(cv_dir, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("ship_weights",
                                                  REPO / "scripts" / "ship_weights.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    dest = tmp_path / "ulvm_unet_v2_cv3"
    assert script.main([str(cv_dir), "--dest", str(dest)]) == 0
    out = capsys.readouterr().out
    assert "3-fold ensemble of ulvm_unet_v2; OOF per-patient Dice" in out and "default" not in out
    assert read_manifest(dest)["metadata"]["default"] is False
    assert script.main([str(cv_dir), "--dest", str(dest)]) == 2
    assert "exists" in capsys.readouterr().err
    assert script.main([str(cv_dir), "--dest", str(dest), "--overwrite", "--default",
                        "--evaluated", "results/cv/ulvm_unet_v2/summary.json"]) == 0
    meta = read_manifest(dest)["metadata"]
    assert meta["default"] is True and meta["evaluated"] == "results/cv/ulvm_unet_v2/summary.json"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ulvm_unet_v2_cv3"]   # no leftovers


def test_folds_without_a_recorded_checkpoint_use_best_else_last(cv_dir, tmp_path):
    cv = tmp_path / "cv"
    shutil.copytree(cv_dir, cv)
    for path in [cv / "summary.json", *(cv / f"fold_{i}" / "summary.json" for i in range(3))]:
        data = json.loads(path.read_text())
        data.pop("checkpoint")
        for row in data.get("folds", []):
            row.pop("checkpoint")
        path.write_text(json.dumps(data))
    shutil.rmtree(cv / "fold_2" / "best")
    assert fold_checkpoints(cv) == [cv / "fold_0" / "best", cv / "fold_1" / "best",
                                    cv / "fold_2" / "last"]


def test_refresh_metrics_from_the_saved_results_alone(cv_dir, shipped, tmp_path, capsys):
    """An ensemble shipped before a score was recorded gets its scores rewritten from the saved
    cross-validation results (no fold weights); anything but its own cross-validation is
    refused, and nothing is written."""
    dest = tmp_path / "ens"
    shutil.copytree(shipped, dest)
    manifest = json.loads((dest / "ensemble.json").read_text())
    del manifest["metadata"]["metrics"]["cv"]["val_dice_patient"]
    (dest / "ensemble.json").write_text(json.dumps(manifest))
    saved = tmp_path / "saved"                          # results/cv keeps only the small files
    shutil.copytree(cv_dir, saved, ignore=shutil.ignore_patterns("best", "last"))
    weights = {p: p.read_bytes() for p in dest.rglob("*.safetensors")}
    spec = importlib.util.spec_from_file_location("ship_weights",
                                                  REPO / "scripts" / "ship_weights.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main([str(saved), "--dest", str(dest), "--metrics-only",
                        "--evaluated", "results/cv/x/summary.json"]) == 0
    assert "validation" in capsys.readouterr().out
    after = read_manifest(dest)
    assert after["metadata"]["metrics"]["cv"] == read_manifest(shipped)["metadata"]["metrics"]["cv"]
    assert after["metadata"]["evaluated"] == "results/cv/x/summary.json"
    assert after["postprocess"] == manifest["postprocess"]
    assert {p: p.read_bytes() for p in dest.rglob("*.safetensors")} == weights
    other = tmp_path / "other"
    shutil.copytree(saved, other)
    summary = json.loads((other / "summary.json").read_text())
    summary["dice_patient"]["mean"] += 0.01
    (other / "summary.json").write_text(json.dumps(summary))
    before = (dest / "ensemble.json").read_bytes()
    with pytest.raises(MambasegError, match="is not the cross-validation .* OOF per-patient Dice"):
        refresh_metrics(dest, other)
    shutil.rmtree(dest / "fold_2")
    manifest = json.loads(before)
    manifest["members"] = ["fold_0", "fold_1"]
    (dest / "ensemble.json").write_text(json.dumps(manifest))
    with pytest.raises(MambasegError, match="2 members against 3 folds"):
        refresh_metrics(dest, saved)
    assert json.loads((dest / "ensemble.json").read_text()) == manifest
