"""With no model named, predict and segment() run the shipped model taking the slice's channels:
a grayscale slice (FLAIR) the FLAIR-only one, an RGB slice the default one; one error (exit
status 2, nothing written) when it is not shipped or when grayscale and RGB slices mix."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mambaseg.cli import main
from mambaseg.data.io import read_image, read_mask
from mambaseg.errors import DataError
from mambaseg.inference.loading import load_checkpoint, save_ensemble
from mambaseg.inference.predict import segment
from mambaseg.inference.runner import image_probs
from mambaseg.models import create_model, pretrained

SAMPLE = Path(__file__).resolve().parents[2] / "examples" / "lgg-sample"


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict[str, Path]:
    """Two shipped-weights folders: ``both`` (the default 3-channel ensemble ``rgb`` and a
    1-channel checkpoint ``flair`` recording its channel as ``train --channels flair`` does)
    and ``rgb_only``."""
    root = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    save_ensemble(root / "both" / "rgb", [create_model("unet", features=(4, 8))],
                  metadata={"default": True})
    create_model("unet", in_channels=1, features=(4, 8)).save_pretrained(
        root / "both" / "flair", metadata={"training": {"channels": ["FLAIR"]}})
    shutil.copytree(root / "both" / "rgb", root / "rgb_only" / "rgb")
    return {"both": root / "both", "rgb_only": root / "rgb_only"}


@pytest.fixture(scope="module")
def rgb() -> np.ndarray:
    return read_image(sorted((SAMPLE / "kaggle_3m" / "TCGA_HT_8106_19970727").glob("*_1?.tif"))[0])


def _slices(folder: Path, rgb: np.ndarray, **names: str) -> dict[str, Path]:
    """``name="gray"`` writes the FLAIR channel alone, ``name="rgb"`` the RGB slice, as PNGs."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, kind in names.items():
        out[name] = folder / f"{name}.png"
        Image.fromarray(rgb[..., 1] if kind == "gray" else rgb).save(out[name])
    return out


def _direct(model_dir: Path, image: np.ndarray) -> np.ndarray:
    """The model's probabilities on an (H, W, C) image, run directly."""
    return image_probs(load_checkpoint(model_dir), [image], 8, "cpu")[0]


def _predict(capsys, *args) -> tuple[int, str]:
    code = main(["predict", *map(str, args), "--device", "cpu", "--no-progress"])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def _png_probs(p: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(p * 255.0), 0, 255).astype(np.uint8)


def test_a_grayscale_slice_gets_the_flair_model_and_an_rgb_slice_the_default(
        tmp_path, capsys, monkeypatch, weights, rgb):
    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", weights["both"])
    files = _slices(tmp_path / "in", rgb, g="gray", c="rgb")
    flair_dir, rgb_dir = weights["both"] / "flair", weights["both"] / "rgb"
    expected = {"g": ("shipped:flair", ["FLAIR"], _direct(flair_dir, rgb[..., 1:2])),
                "c": ("shipped:rgb", ["pre-contrast", "FLAIR", "post-contrast"],
                      _direct(rgb_dir, rgb))}
    # the gray slice is what the FLAIR-only model gets of the RGB one
    assert np.array_equal(expected["g"][2], image_probs(load_checkpoint(flair_dir), [rgb[..., 1:2]],
                                                        8, "cpu")[0])
    for name, (label, channels, probs) in expected.items():
        out = tmp_path / f"out_{name}"
        code, err = _predict(capsys, "-i", files[name], "-o", out, "--probabilities")
        assert code == 0, err
        s = json.loads((out / "summary.json").read_text())
        assert (s["checkpoint"], s["channels"]) == (label, channels)
        assert s["images"][0]["notes"] is None                      # nothing converted
        assert np.array_equal(read_mask(out / f"{name}_mask.png"), probs > 0.5)
        assert np.array_equal(np.asarray(Image.open(out / f"{name}_prob.png")),
                              _png_probs(probs))
    # the FLAIR model given the RGB slice by --checkpoint takes its FLAIR: the same probabilities
    code, _ = _predict(capsys, "-i", files["c"], "-o", tmp_path / "ck", "--probabilities",
                       "--checkpoint", flair_dir)
    assert code == 0 and np.array_equal(np.asarray(Image.open(tmp_path / "ck" / "c_prob.png")),
                                        _png_probs(expected["g"][2]))


def test_a_grayscale_slice_without_a_flair_model_is_one_error_and_writes_nothing(
        tmp_path, capsys, monkeypatch, weights, rgb):
    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", weights["rgb_only"])
    files = _slices(tmp_path / "in", rgb, a="gray", b="gray")
    for src, named in ((files["a"], f"{files['a']}: "), (tmp_path / "in", f"{files['a']} and 1 "
                                                         "more slice(s) like it: ")):
        code, err = _predict(capsys, "-i", src, "-o", tmp_path / "out")
        assert code == 2 and not (tmp_path / "out").exists()
        assert err.count("error") == 1 and named + "one channel (a FLAIR slice) but no " \
            "FLAIR-only model is shipped" in err, err
        assert "mambaseg train --channels flair' and pass --checkpoint" in err
        assert "give RGB slices (pre-contrast, FLAIR, post-contrast)" in err
    # an RGB slice still runs on the default model
    _slices(tmp_path / "rgb", rgb, c="rgb")
    code, _ = _predict(capsys, "-i", tmp_path / "rgb", "-o", tmp_path / "out")
    assert code == 0


def test_a_folder_mixing_grayscale_and_rgb_slices_is_refused_unless_a_model_is_named(
        tmp_path, capsys, monkeypatch, weights, rgb):
    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", weights["both"])
    _slices(tmp_path / "in", rgb, g="gray", c="rgb")
    code, err = _predict(capsys, "-i", tmp_path / "in", "-o", tmp_path / "out")
    assert code == 2 and not (tmp_path / "out").exists()
    assert f"{tmp_path / 'in'}: mixes 1 grayscale slice(s) (FLAIR, e.g. " in err
    assert "g.png) and 1 RGB slice(s) (e.g. " in err and "separate runs" in err
    code, _ = _predict(capsys, "-i", tmp_path / "in", "-o", tmp_path / "out", "--checkpoint",
                       weights["both"] / "flair")
    assert code == 0 and len(json.loads((tmp_path / "out" / "summary.json").read_text())
                             ["images"]) == 2


def test_segment_picks_the_model_of_the_arrays_channels(monkeypatch, weights, rgb):
    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", weights["both"])
    flair_dir, rgb_dir = str(weights["both"] / "flair"), str(weights["both"] / "rgb")
    flair = segment(rgb, model=flair_dir, device="cpu", return_probs=True)   # its FLAIR channel
    assert np.array_equal(segment(rgb[..., 1], device="cpu", return_probs=True), flair)
    assert np.array_equal(segment(rgb[..., 1], device="cpu"), (flair > 0.5).astype(np.uint8))
    assert np.array_equal(segment(rgb, device="cpu", return_probs=True),
                          segment(rgb, model=rgb_dir, device="cpu", return_probs=True))
    with pytest.raises(DataError, match=r"segment\(\): mixes 1 grayscale .*<array 0>"):
        segment([rgb[..., 1], rgb], device="cpu")
    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", weights["rgb_only"])
    with pytest.raises(DataError, match=r"^<array>: one channel \(a FLAIR slice\) but no "
                                        r"FLAIR-only model is shipped"):
        segment(rgb[..., 1], device="cpu")
    # a model named: as before (grayscale repeated to 3 channels)
    assert segment(rgb[..., 1], model=rgb_dir, device="cpu").shape == rgb.shape[:2]


def test_one_rule_for_slices_and_volumes(monkeypatch, weights):
    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", weights["both"])
    assert pretrained.shipped_for(3, "x") == "rgb" and pretrained.shipped_for(1, "x") == "flair"
    assert pretrained.shipped_models()["flair"]["channels"] == ("FLAIR",)
    with pytest.raises(DataError, match="x: 2 channels .*no model takes 2"):
        pretrained.shipped_for(2, "x")
    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", weights["rgb_only"])
    with pytest.raises(DataError, match="x: one channel \\(a FLAIR volume\\).*all three channels"):
        pretrained.shipped_for(1, "x", "volume")


def test_flair_input_gets_the_default_networks_flair_version(monkeypatch, tmp_path):
    """Of several FLAIR-only models, the default's own network trained on FLAIR wins over a
    better-scored other network (the scores are out-of-fold test scores, never a selection
    rule); without such a twin, the best scored one is used."""
    torch.manual_seed(0)
    flair = {"training": {"channels": ["FLAIR"]}}
    save_ensemble(tmp_path / "default_rgb", [create_model("unet", features=(4, 8))],
                  metadata={"default": True, "metrics": {"cv": {"dice_patient": 0.8}}})
    create_model("unet", in_channels=1, features=(4, 8)).save_pretrained(
        tmp_path / "twin_flair", metadata={**flair, "metrics": {"cv": {"dice_patient": 0.5}}})
    create_model("unet", in_channels=1, features=(4, 16)).save_pretrained(
        tmp_path / "other_flair", metadata={**flair, "metrics": {"cv": {"dice_patient": 0.9}}})
    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", tmp_path)
    shipped = pretrained.shipped_models()
    assert shipped["twin_flair"]["model_kwargs"] == shipped["default_rgb"]["model_kwargs"]
    assert pretrained.shipped_for(1, "x") == "twin_flair"
    assert pretrained.shipped_with(["flair"]) == "twin_flair"
    shutil.rmtree(tmp_path / "twin_flair")
    assert pretrained.shipped_for(1, "x") == "other_flair"
