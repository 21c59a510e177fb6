"""FLAIR-only models: the channel choice in loading, settings and the CLI, and predict feeding a
FLAIR-only checkpoint the FLAIR channel of the RGB slices."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mambaseg.data.channels import channel_names, checkpoint_channels, choice_of, select_channels
from mambaseg.errors import MambasegError

SAMPLE = Path(__file__).resolve().parents[2] / "examples" / "lgg-sample"


def test_the_channel_vocabulary():
    assert channel_names("flair") == ["FLAIR"] and channel_names("ALL")[1] == "FLAIR"
    assert choice_of(["FLAIR"]) == "flair" and choice_of(["a", "b"]) is None
    with pytest.raises(MambasegError, match="unknown --channels 't1'.*all, flair"):
        channel_names("t1")
    img = np.arange(24, dtype=np.uint8).reshape(2, 4, 3)
    assert np.array_equal(select_channels(img, "flair")[..., 0], img[..., 1])
    assert checkpoint_channels({"preprocessing": {"channels": None}}, 3)[1] == "FLAIR"
    assert checkpoint_channels({"metadata": {"channels": ["FLAIR"]}}, 1) == ("FLAIR",)
    assert checkpoint_channels({}, 1) is None


def test_load_arrays_and_slice_dataset_take_the_flair_channel():
    from mambaseg.data import find_slices
    from mambaseg.data.dataset import SliceDataset, load_arrays

    slices = find_slices(SAMPLE)[:3]
    rgb, masks = load_arrays(slices, progress=False)
    flair, masks1 = load_arrays(slices, progress=False, channels="flair")
    assert flair.shape == (3, 1, 256, 256) and torch.equal(flair[:, 0], rgb[:, 1])
    assert torch.equal(masks, masks1)
    assert torch.equal(load_arrays(slices, progress=False, channels="all")[0], rgb)
    image, _ = SliceDataset(slices, channels="flair")[0]
    assert image.shape == (1, 256, 256) and torch.allclose(image[0], rgb[0, 1].float() / 255)


def test_train_settings_and_options_take_channels():
    from mambaseg.cli import build_parser
    from mambaseg.cli.train import config_from_args
    from mambaseg.training.config import TrainConfig, resolved_settings

    assert TrainConfig().channels == "all"
    with pytest.raises(MambasegError, match="unknown --channels 't2'"):
        resolved_settings(TrainConfig(model="unet", channels="t2"))
    parser = build_parser()
    for cmd in ("train", "crossval"):
        args = parser.parse_args([cmd, "--model", "unet", "--data", "d", "-o", "r",
                                  "--channels", "flair"])
        assert config_from_args(args).channels == "flair"
        args = parser.parse_args([cmd, "--model", "unet", "--data", "d", "-o", "r"])
        assert config_from_args(args).channels == "all"
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--channels", "t1"])


@pytest.fixture(scope="module")
def flair_ckpt(tmp_path_factory) -> Path:
    from mambaseg.models import create_model

    torch.manual_seed(0)
    return create_model("unet", in_channels=1, features=(4, 8)).save_pretrained(
        tmp_path_factory.mktemp("ckpt") / "flair", metadata={"training": {"channels": ["FLAIR"]}})


def test_predict_feeds_a_flair_checkpoint_the_flair_channel(tmp_path, flair_ckpt):
    """RGB slices give their FLAIR channel, a grayscale slice is taken as FLAIR; the masks are
    those of the FLAIR channel alone, not of the RGB's luma."""
    import tifffile

    from mambaseg.data.io import read_image, read_mask
    from mambaseg.inference.predict import run_predict, segment

    src = sorted((SAMPLE / "kaggle_3m" / "TCGA_HT_8106_19970727").glob("*_1?.tif"))[0]
    rgb = read_image(src)
    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in" / "rgb.tif", rgb)
    tifffile.imwrite(tmp_path / "in" / "gray.tif", rgb[..., 1])
    res = run_predict(tmp_path / "in", tmp_path / "out", checkpoint=flair_ckpt, device="cpu",
                      threshold=0.3)
    assert res.summary["channels"] == ["FLAIR"]
    assert all(r["notes"] is None for r in res.written)
    masks = {r["input"]: read_mask(tmp_path / "out" / r["mask"]) for r in res.written}
    assert np.array_equal(masks["rgb.tif"], masks["gray.tif"])
    expected = segment(rgb[..., 1], model=flair_ckpt, device="cpu", threshold=0.3)
    assert np.array_equal(masks["rgb.tif"], expected)
    assert np.array_equal(segment(rgb, model=flair_ckpt, device="cpu", threshold=0.3), expected)
    luma = segment(np.repeat(rgb.mean(axis=2, keepdims=True).astype(np.uint8), 3, axis=2)[..., 0],
                   model=flair_ckpt, device="cpu", threshold=0.3, return_probs=True)
    flair = segment(rgb, model=flair_ckpt, device="cpu", return_probs=True)
    assert not np.allclose(luma, flair)
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["channels"] == ["FLAIR"]
