"""`mambaseg demo`: the README's first command, end to end on the bundled sample."""
from __future__ import annotations

import json

from mambaseg import cli
from mambaseg.models.pretrained import default_shipped


def _outputs(out):
    pred = out / "predictions"
    return sorted(pred.rglob("*_mask.png")), sorted(pred.rglob("*_overlay.png"))


def test_demo_segments_the_sample_with_the_shipped_model(tmp_path, capsys):
    """The README's first command with the default shipped model (the 5-fold mambaseg_s
    ensemble). On the CPU its pooled Dice on the sample is 0.8553, per-slice mean 0.9195
    (optimistic: four of its five fold models trained on these patients); a floor below them
    catches a model that no longer segments (a broken pre- or post-processing, wrong weights)."""
    assert default_shipped() == "mambaseg_s_cv5"
    out = tmp_path / "demo"
    assert cli.main(["demo", "-o", str(out), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "using the shipped mambaseg_s_cv5 weights: an ensemble of 5" in printed
    assert "Dice against the sample's masks: pooled" in printed
    masks, overlays = _outputs(out)
    assert len(masks) == 62 and len(overlays) == 62
    summary = json.loads((out / "predictions" / "summary.json").read_text())
    assert summary["checkpoint"] == "shipped:mambaseg_s_cv5"
    assert summary["dice"]["n"] == 62 and summary["dice"]["n_tumour"] == 25
    assert summary["dice"]["pooled"] > 0.80 and summary["dice"]["slice_mean"] > 0.85
    # a second run replaces what the first demo wrote
    assert cli.main(["demo", "-o", str(out), "--device", "cpu"]) == 0


def test_demo_uses_a_shipped_ensemble_marked_default(tmp_path, capsys, monkeypatch):
    import torch

    from mambaseg.inference.loading import save_ensemble
    from mambaseg.models import create_model, pretrained

    weights = tmp_path / "weights"
    create_model("unet", features=(4, 8)).save_pretrained(
        weights / "unet", metadata={"metrics": {"test": {"dice": 0.99}}})
    members = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        members.append(create_model("unet", features=(4, 8)))
    save_ensemble(weights / "unet_cv2", members, dtype=torch.float16,
                  postprocess={"lcc": True, "min_volume": 0, "min_area": 0},
                  metadata={"metrics": {"cv": {"dice_patient": 0.8312, "n_patients": 110,
                                               "n_folds": 2}}, "default": True})
    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", weights)
    out = tmp_path / "demo"
    assert cli.main(["demo", "-o", str(out), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert ("using the shipped unet_cv2 weights: an ensemble of 2 unet models (the fold models "
            "of a 2-fold cross-validation; out-of-fold per-patient Dice 0.8312 over 110 "
            "patients)") in printed
    assert "so this Dice is optimistic; the out-of-fold Dice 0.8312" in printed
    summary = json.loads((out / "predictions" / "summary.json").read_text())
    assert summary["checkpoint"] == "shipped:unet_cv2" and summary["dice"]["n"] == 62
    assert len(_outputs(out)[0]) == 62


def test_demo_refuses_a_folder_it_did_not_write(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    assert cli.main(["demo", "-o", str(out)]) == 2
    assert "was not written by 'mambaseg demo'" in capsys.readouterr().err
    assert (out / "precious.txt").read_text() == "keep me" and len(list(out.iterdir())) == 1


def test_demo_can_train_first(tmp_path, capsys):
    out = tmp_path / "demo"
    assert cli.main(["demo", "--train", "--epochs", "1", "-o", str(out), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "trained ulvm_unet for 1 epochs" in printed and "optimistic" in printed
    assert (out / "run" / "last" / "model.safetensors").is_file()
    assert len(_outputs(out)[0]) == 62
