"""No silent garbage (issue #22) through mambaseg.cli.main: exit status, message, and nothing
wrong written, for NaN/Inf images, multi-page files, output folders holding inputs, predicted
masks beside images, forward passes too large, and a NaN training loss."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from mambaseg.cli import main
from toy_data import make_toy_dataset, nan_loss_at

NAN_REASON = ("non-finite pixels (NaN/Inf): 400 of 1024; pass --nan-policy zero to replace them "
              "by 0")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """A tiny untrained U-Net checkpoint (trained scale 256, sizes: multiples of 4)."""
    from mambaseg.models import create_model

    torch.manual_seed(0)
    return create_model("unet", features=(4, 8, 16)).save_pretrained(
        tmp_path_factory.mktemp("ckpt") / "unet")


def strict_json(text: str):
    def refuse(name):
        raise AssertionError(f"bare {name} in JSON")

    return json.loads(text, parse_constant=refuse)


def cli(capsys, *args) -> tuple[int, str, str]:
    code = main([*map(str, args)])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def predict(capsys, ckpt, *args):
    return cli(capsys, "predict", *args, "--checkpoint", ckpt, "--device", "cpu",
               "--no-progress")


def _png(path: Path, h=32, w=32) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def _nan_tif(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(1).random((32, 32), dtype=np.float32)
    arr[6:26, 6:26] = np.nan
    tifffile.imwrite(path, arr)
    return path


def _files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


# ----------------------------------------------------------------------------- predict

def test_predict_single_nan_image_exits_2_writing_nothing(tmp_path, capsys, ckpt):
    nan = _nan_tif(tmp_path / "in" / "nan.tif")
    code, _, err = predict(capsys, ckpt, "-i", nan, "-o", tmp_path / "out")
    assert code == 2
    assert err.strip() == f"mambaseg predict: error: {nan}: {NAN_REASON}"
    assert not (tmp_path / "out").exists()


def test_predict_nan_image_among_others_is_skipped(tmp_path, capsys, ckpt):
    _png(tmp_path / "in" / "good.png")
    _nan_tif(tmp_path / "in" / "nan.tif")
    code, out, err = predict(capsys, ckpt, "-i", tmp_path / "in", "-o", tmp_path / "out")
    assert code == 1
    assert f"skipped nan.tif: {NAN_REASON}" in err and "1 skipped" in out
    assert _files(tmp_path / "out") == ["good_mask.png", "summary.json"]
    s = strict_json((tmp_path / "out" / "summary.json").read_text())
    assert s["skipped"] == [{"input": "nan.tif", "reason": NAN_REASON}]


def test_predict_nan_policy_zero_segments_with_a_note(tmp_path, capsys, ckpt):
    nan = _nan_tif(tmp_path / "in" / "nan.tif")
    code, _, err = predict(capsys, ckpt, "-i", nan, "-o", tmp_path / "out",
                           "--nan-policy", "zero")
    assert code == 0
    assert "note: nan.tif: 400 non-finite pixel(s) (NaN/Inf) replaced by 0" in err
    assert _files(tmp_path / "out") == ["nan_mask.png", "summary.json"]
    s = strict_json((tmp_path / "out" / "summary.json").read_text())
    assert "400 non-finite pixel(s) (NaN/Inf) replaced by 0" in s["images"][0]["notes"]
    assert s["nan_policy"] == "zero"


def test_predict_multi_page_and_animated_images(tmp_path, capsys, ckpt):
    stack = tmp_path / "in" / "stack.tif"
    stack.parent.mkdir()
    tifffile.imwrite(stack, np.zeros((4, 32, 32), np.uint8), photometric="minisblack")
    code, _, err = predict(capsys, ckpt, "-i", stack, "-o", tmp_path / "out")
    assert code == 2 and not (tmp_path / "out").exists()
    assert f"{stack}: multi-page image (4 pages): mambaseg reads single 2-D slices" in err
    frames = [Image.fromarray(np.full((32, 32, 3), 80 * i, np.uint8)) for i in range(3)]
    frames[0].save(tmp_path / "in" / "anim.png", save_all=True, append_images=frames[1:])
    _png(tmp_path / "in" / "good.png")
    code, _, err = predict(capsys, ckpt, "-i", tmp_path / "in", "-o", tmp_path / "out")
    assert code == 1
    assert "skipped anim.png: multi-frame image (3 frames): mambaseg reads single 2-D" in err
    assert "skipped stack.tif: multi-page image (4 pages)" in err
    assert _files(tmp_path / "out") == ["good_mask.png", "summary.json"]


def test_predict_refuses_an_output_folder_holding_the_input(tmp_path, capsys, ckpt):
    img = _png(tmp_path / "dir" / "x.png")
    code, _, err = predict(capsys, ckpt, "-i", img, "-o", tmp_path / "dir")
    assert code == 2
    assert f"output directory {tmp_path / 'dir'} holds the input image {img}" in err
    assert _files(tmp_path / "dir") == ["x.png"]


def test_predict_never_scores_against_an_earlier_prediction(tmp_path, capsys, ckpt):
    img = _png(tmp_path / "a" / "x.png")
    assert predict(capsys, ckpt, "-i", img, "-o", tmp_path / "b")[0] == 0
    shutil.copy(tmp_path / "b" / "x_mask.png", tmp_path / "a" / "x_mask.png")
    code, out, err = predict(capsys, ckpt, "-i", img, "-o", tmp_path / "c")
    assert code == 0 and "Dice" not in out
    assert (f"warning: {tmp_path / 'a' / 'x_mask.png'}: written by mambaseg predict, not taken "
            "as the ground truth of x.png") in err
    assert "truth" not in strict_json((tmp_path / "c" / "summary.json").read_text())["images"][0]


def test_predict_max_pixels_with_no_resize(tmp_path, capsys, ckpt):
    big = _png(tmp_path / "in" / "big.png", 600, 600)
    code, _, err = predict(capsys, ckpt, "-i", big, "-o", tmp_path / "out", "--no-resize",
                           "--max-pixels", 300_000)
    assert code == 2 and not (tmp_path / "out").exists()
    assert (f"{big}: 600 x 600 would need about 0.4 GB for the forward pass, more than "
            "--max-pixels 300000 allows; resize it, leave out --no-resize, or raise "
            "--max-pixels") in err
    # at the model's scale (256) the same image is fine
    code, _, _ = predict(capsys, ckpt, "-i", big, "-o", tmp_path / "out", "--max-pixels", 300_000)
    assert code == 0 and _files(tmp_path / "out") == ["big_mask.png", "summary.json"]
    code, _, err = predict(capsys, ckpt, "-i", big, "-o", tmp_path / "o2", "--max-pixels", 0)
    assert code == 2 and "--max-pixels must be at least 1" in err


# ----------------------------------------------------------------------------- evaluate

def test_evaluate_dataset_with_a_nan_image_names_it(tmp_path, capsys, ckpt):
    from mambaseg.data import resolve_split

    toy = make_toy_dataset(tmp_path / "toy", per_patient=4)
    parts = resolve_split(toy, "paper")
    victim = parts["test"][0].image
    victim.unlink()
    bad = _nan_tif(victim.with_suffix(".tif"))
    code, _, err = cli(capsys, "evaluate", "--checkpoint", ckpt, "--data", toy, "--split",
                       "paper", "--part", "test", "--device", "cpu", "--no-progress")
    assert code == 2
    assert (f"mambaseg evaluate: error: {bad}: non-finite pixels (NaN/Inf): 400 of 1024; "
            "fix or remove the file") in err and "--nan-policy zero" in err
    assert not list(ckpt.glob("summary*.json"))
    out = tmp_path / "summary.json"
    code, _, err = cli(capsys, "evaluate", "--checkpoint", ckpt, "--data", toy, "--split",
                       "paper", "--part", "test", "--device", "cpu", "--no-progress",
                       "--nan-policy", "zero", "-o", out)
    assert code == 0
    s = json.loads(out.read_text())
    rel = bad.relative_to(toy / "kaggle_3m").as_posix() if (toy / "kaggle_3m").is_dir() \
        else bad.relative_to(toy).as_posix()
    assert list(s["nan_replaced"]) == [rel]
    assert s["nan_replaced"][rel].startswith("400 non-finite pixel(s) (NaN/Inf) replaced by 0;")
    assert s["n_slices"] == len(parts["test"])


# ----------------------------------------------------------------------------- train

@pytest.mark.usefixtures("one_thread")
def test_train_stops_at_a_nan_loss_keeping_the_last_good_epoch(tmp_path, capsys, monkeypatch):
    from mambaseg.training.train_state import load_train_state

    monkeypatch.setattr("mambaseg.training.trainer.get_loss", nan_loss_at(2, 2))
    toy = make_toy_dataset(tmp_path / "toy", per_patient=4)
    run = tmp_path / "run"
    code, out, err = cli(capsys, "train", "--model", "ulvm_unet", "--data", toy, "-o", run,
                         "--epochs", 3, "--batch-size", 4, "--device", "cpu", "--no-progress")
    assert code == 2, err
    assert err.startswith("mambaseg train: error: the training loss became NaN/Inf at epoch 2, "
                          "step 2 of ")
    assert f"{run / 'last'} still holds epoch 1, the last good checkpoint" in err
    assert "epoch 1/3" in out and "epoch 2/3" not in out
    assert load_train_state(run / "last")["epoch"] == 1
    assert [strict_json(line)["epoch"]
            for line in (run / "metrics.jsonl").read_text().splitlines()] == [1]
    strict_json((run / "config.json").read_text())
    strict_json((run / "last" / "config.json").read_text())
