"""`mambaseg demo`: the README's first command, end to end on the bundled sample."""
from __future__ import annotations

import json

import pytest

from mambaseg import cli
from mambaseg.models.pretrained import best_shipped


def _outputs(out):
    pred = out / "predictions"
    return sorted(pred.rglob("*_mask.png")), sorted(pred.rglob("*_overlay.png"))


@pytest.mark.skipif(best_shipped() is None, reason="the package ships no weights")
def test_demo_segments_the_sample_with_the_shipped_model(tmp_path, capsys):
    out = tmp_path / "demo"
    assert cli.main(["demo", "-o", str(out), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert f"using the shipped {best_shipped()} weights" in printed
    assert "Dice against the sample's masks: pooled" in printed
    masks, overlays = _outputs(out)
    assert len(masks) == 62 and len(overlays) == 62
    summary = json.loads((out / "predictions" / "summary.json").read_text())
    assert summary["dice"]["n"] == 62 and 0.0 <= summary["dice"]["pooled"] <= 1.0
    # a second run replaces what the first demo wrote
    assert cli.main(["demo", "-o", str(out), "--device", "cpu"]) == 0


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
