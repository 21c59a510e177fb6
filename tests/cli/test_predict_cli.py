"""`mambaseg predict` through mambaseg.cli.main: outputs, notes, refusals and user errors."""
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
from toy_data import Bright

SAMPLE = Path(__file__).resolve().parents[2] / "examples" / "lgg-sample"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """A tiny untrained U-Net checkpoint (sizes: multiples of 4)."""
    from mambaseg.models import create_model

    torch.manual_seed(0)
    return create_model("unet", features=(4, 8, 16)).save_pretrained(
        tmp_path_factory.mktemp("ckpt") / "unet")


def run(capsys, *args) -> tuple[int, str, str]:
    code = main(["predict", *map(str, args)])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def _png(path: Path, h=32, w=32, mode="RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    shape = {"RGB": (h, w, 3), "L": (h, w), "RGBA": (h, w, 4)}[mode]
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(path)
    return path


def _files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


# ----------------------------------------------------------------------------- outputs

def test_single_file(tmp_path, capsys, ckpt):
    img = _png(tmp_path / "in" / "slice.png")
    code, out, _ = run(capsys, "-i", img, "-o", tmp_path / "out", "--checkpoint", ckpt,
                       "--device", "cpu")
    assert code == 0
    assert _files(tmp_path / "out") == ["slice_mask.png", "summary.json"]
    mask = np.array(Image.open(tmp_path / "out" / "slice_mask.png"))
    assert mask.shape == (32, 32) and mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
    assert "tumour pixel" in out and "slice_mask.png" in out
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert s["model"] == "unet" and s["checkpoint"] == str(ckpt)
    assert s["images"][0]["input"] == "slice.png" and s["images"][0]["mask"] == "slice_mask.png"
    assert s["images"][0]["tumour_pixels"] == int((mask > 0).sum())


def test_folder_recursive_keeps_structure(tmp_path, capsys, ckpt):
    _png(tmp_path / "in" / "a" / "b" / "x.png")
    _png(tmp_path / "in" / "y.png")
    tifffile.imwrite(tmp_path / "in" / "a" / "z.tif", np.zeros((32, 32, 3), np.uint8))
    code, _, _ = run(capsys, "-i", tmp_path / "in", "-o", tmp_path / "out", "--checkpoint", ckpt,
                     "--device", "cpu")
    assert code == 0
    assert _files(tmp_path / "out") == ["a/b/x_mask.png", "a/z_mask.png", "summary.json",
                                        "y_mask.png"]


def test_probabilities_and_overlay(tmp_path, capsys, ckpt):
    img = _png(tmp_path / "in" / "s.png", 40, 24)
    code, _, _ = run(capsys, "-i", img, "-o", tmp_path / "out", "--checkpoint", ckpt,
                     "--device", "cpu", "--probabilities", "--overlay")
    assert code == 0
    assert _files(tmp_path / "out") == ["s_mask.png", "s_overlay.png", "s_prob.png", "summary.json"]
    prob = np.array(Image.open(tmp_path / "out" / "s_prob.png"))
    overlay = Image.open(tmp_path / "out" / "s_overlay.png")
    assert prob.shape == (40, 24) and prob.dtype == np.uint8
    assert overlay.mode == "RGB" and overlay.size == (24, 40)
    mask = np.array(Image.open(tmp_path / "out" / "s_mask.png")) > 0
    assert np.array_equal(mask, prob > 127) or abs(int(mask.sum()) - int((prob > 127).sum())) < 5


def test_odd_size_input_gives_same_size_mask(tmp_path, capsys, ckpt):
    img = _png(tmp_path / "in" / "odd.png", 250, 300)
    code, _, _ = run(capsys, "-i", img, "-o", tmp_path / "out", "--checkpoint", ckpt,
                     "--device", "cpu")
    assert code == 0
    assert Image.open(tmp_path / "out" / "odd_mask.png").size == (300, 250)


def test_grayscale_and_rgba_are_converted_with_a_note(tmp_path, capsys, ckpt):
    _png(tmp_path / "in" / "g.png", mode="L")
    _png(tmp_path / "in" / "r.png", mode="RGBA")
    code, _, err = run(capsys, "-i", tmp_path / "in", "-o", tmp_path / "out", "--checkpoint",
                       ckpt, "--device", "cpu")
    assert code == 0
    assert "note: g.png: grayscale" in err and "note: r.png: alpha channel dropped" in err
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert s["counts"]["converted"] == 2


def test_unreadable_image_is_reported_and_skipped(tmp_path, capsys, ckpt):
    _png(tmp_path / "in" / "good.png")
    (tmp_path / "in" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    code, out, err = run(capsys, "-i", tmp_path / "in", "-o", tmp_path / "out", "--checkpoint",
                         ckpt, "--device", "cpu")
    assert code == 1
    assert "skipped bad.png:" in err and "unreadable" in err
    assert _files(tmp_path / "out") == ["good_mask.png", "summary.json"]
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert s["skipped"][0]["input"] == "bad.png"
    assert "1 skipped" in out


@pytest.mark.skipif(not (SAMPLE / "kaggle_3m").is_dir(), reason="bundled sample not present")
def test_kaggle_root_skips_masks_and_prints_dice(tmp_path, capsys, ckpt):
    code, out, _ = run(capsys, "-i", SAMPLE, "-o", tmp_path / "out", "--checkpoint", ckpt,
                       "--device", "cpu", "--no-progress")
    assert code == 0
    assert "Dice against the" in out and "pooled" in out and "per-slice mean" in out
    written = _files(tmp_path / "out")
    assert not any(w.endswith("_mask_mask.png") for w in written)
    n_images = len([p for p in SAMPLE.rglob("*.tif") if not p.stem.endswith("_mask")])
    assert len(written) == n_images + 1
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert s["dice"]["n"] == n_images and 0.0 <= s["dice"]["pooled"] <= 1.0
    assert all("dice" in r for r in s["images"])


# ----------------------------------------------------------------------------- refusals

def test_refuses_to_overwrite_then_overwrite_works(tmp_path, capsys, ckpt):
    img = _png(tmp_path / "in" / "s.png")
    args = ["-i", img, "-o", tmp_path / "out", "--checkpoint", ckpt, "--device", "cpu"]
    assert run(capsys, *args)[0] == 0
    stamp = (tmp_path / "out" / "s_mask.png").stat().st_mtime_ns
    code, _, err = run(capsys, *args, "--overlay")
    assert code == 2 and "already exist" in err and "--overwrite" in err
    assert not (tmp_path / "out" / "s_overlay.png").exists()
    assert (tmp_path / "out" / "s_mask.png").stat().st_mtime_ns == stamp
    assert run(capsys, *args, "--overlay", "--overwrite")[0] == 0
    assert (tmp_path / "out" / "s_overlay.png").is_file()


@pytest.mark.parametrize("sub", ["", "masks", "a/b"])
def test_refuses_outdir_inside_input(tmp_path, capsys, ckpt, sub):
    _png(tmp_path / "in" / "s.png")
    code, _, err = run(capsys, "-i", tmp_path / "in", "-o", tmp_path / "in" / sub,
                       "--checkpoint", ckpt, "--device", "cpu")
    assert code == 2 and "inside the input" in err
    assert _files(tmp_path / "in") == ["s.png"]


# ----------------------------------------------------------------------------- user errors

def test_unknown_model_lists_valid_names(tmp_path, capsys):
    img = _png(tmp_path / "in" / "s.png")
    code, _, err = run(capsys, "-i", img, "-o", tmp_path / "out", "--model", "nosuch")
    assert code == 2 and "unknown model 'nosuch'" in err and "ulvm_unet_v5" in err and "unet" in err
    assert not (tmp_path / "out").exists()


def test_missing_and_empty_input(tmp_path, capsys, ckpt):
    code, _, err = run(capsys, "-i", tmp_path / "nope", "-o", tmp_path / "out", "--checkpoint", ckpt)
    assert code == 2 and "does not exist" in err
    (tmp_path / "empty").mkdir()
    code, _, err = run(capsys, "-i", tmp_path / "empty", "-o", tmp_path / "out", "--checkpoint", ckpt)
    assert code == 2 and "no images" in err
    assert not (tmp_path / "out").exists()


def test_bad_checkpoints(tmp_path, capsys, ckpt):
    img = _png(tmp_path / "in" / "s.png")
    other = tmp_path / "other"
    shutil.copytree(ckpt, other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["model_name"] = "resnet18"                       # weights of a U-Net, config of a ResNet
    (other / "config.json").write_text(json.dumps(cfg))
    code, _, err = run(capsys, "-i", img, "-o", tmp_path / "out", "--checkpoint", other,
                       "--device", "cpu")
    assert code == 2 and str(other) in err
    trunc = tmp_path / "trunc"
    shutil.copytree(ckpt, trunc)
    data = (trunc / "model.safetensors").read_bytes()
    (trunc / "model.safetensors").write_bytes(data[: len(data) // 3])
    code, _, err = run(capsys, "-i", img, "-o", tmp_path / "out", "--checkpoint", trunc,
                       "--device", "cpu")
    assert code == 2 and str(trunc) in err
    code, _, err = run(capsys, "-i", img, "-o", tmp_path / "out", "--checkpoint", tmp_path / "none")
    assert code == 2 and "does not exist" in err
    assert not (tmp_path / "out").exists()


def test_output_dir_not_writable(tmp_path, capsys, ckpt):
    img = _png(tmp_path / "in" / "s.png")
    (tmp_path / "file").write_text("a regular file")
    code, _, err = run(capsys, "-i", img, "-o", tmp_path / "file" / "out", "--checkpoint", ckpt,
                       "--device", "cpu")
    assert code == 2 and "is a file" in err
    code, _, err = run(capsys, "-i", img, "-o", tmp_path / "file", "--checkpoint", ckpt,
                       "--device", "cpu")
    assert code == 2 and "file" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_asked_for_without_cuda(tmp_path, capsys, ckpt):
    img = _png(tmp_path / "in" / "s.png")
    with pytest.raises(SystemExit) as exc:                # refused while parsing the options
        run(capsys, "-i", img, "-o", tmp_path / "out", "--checkpoint", ckpt, "--device", "cuda")
    assert exc.value.code == 2 and "CUDA is not available" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_checkpoint_run_dir_uses_its_best(tmp_path, capsys, ckpt):
    run_dir = tmp_path / "run"
    shutil.copytree(ckpt, run_dir / "best")
    shutil.copytree(ckpt, run_dir / "last")
    (run_dir / "config.json").write_text(json.dumps({"model": "unet", "checkpoint": "best"}))
    img = _png(tmp_path / "in" / "s.png")
    code, _, err = run(capsys, "-i", img, "-o", tmp_path / "out", "--checkpoint", run_dir,
                       "--device", "cpu")
    assert code == 0
    assert f"note: {run_dir} is a training run: using its checkpoint {run_dir / 'best'}" in err
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert s["checkpoint"] == str(run_dir / "best")


# ----------------------------------------------------------------------------- shipped weights

def test_no_shipped_weights_says_to_pass_checkpoint(tmp_path, capsys, monkeypatch):
    from mambaseg.models import pretrained

    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", tmp_path / "no-weights")
    img = _png(tmp_path / "in" / "s.png")
    code, _, err = run(capsys, "-i", img, "-o", tmp_path / "out")
    assert code == 2 and "--checkpoint" in err
    code, _, err = run(capsys, "-i", img, "-o", tmp_path / "out", "--model", "unet")
    assert code == 2 and "no pretrained weights are shipped for 'unet'" in err


def test_shipped_model_by_name_and_best_by_default(tmp_path, capsys, monkeypatch, ckpt):
    from mambaseg.models import create_model, pretrained

    weights = tmp_path / "weights"
    create_model("unet", features=(4, 8)).save_pretrained(
        weights / "unet", metadata={"metrics": {"test": {"dice": 0.5}}})
    shutil.copytree(ckpt, weights / "unet_big")                      # no test Dice recorded
    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", weights)
    img = _png(tmp_path / "in" / "s.png")
    code, out, _ = run(capsys, "-i", img, "-o", tmp_path / "o1", "--model", "unet", "--device", "cpu")
    assert code == 0 and "unet (shipped:unet" in out
    code, out, _ = run(capsys, "-i", img, "-o", tmp_path / "o2", "--device", "cpu")
    assert code == 0
    assert json.loads((tmp_path / "o2" / "summary.json").read_text())["checkpoint"] == "shipped:unet"


# ----------------------------------------------------------------------------- ensembles

def test_two_checkpoints_average_their_probabilities(tmp_path, capsys, ckpt):
    from mambaseg.inference.loading import load_checkpoint
    from mambaseg.inference.runner import predict_probs
    from mambaseg.models import create_model

    torch.manual_seed(1)
    other = create_model("unet", features=(4, 8, 16)).save_pretrained(tmp_path / "other")
    img = _png(tmp_path / "in" / "s.png", 40, 48)
    x = torch.from_numpy(np.array(Image.open(img))).permute(2, 0, 1)[None]
    mean = sum(predict_probs(load_checkpoint(c), x)[0, 0] for c in (ckpt, other)) / 2
    t = round(float(mean.median()), 4)
    code, out, _ = run(capsys, "-i", img, "-o", tmp_path / "out", "--checkpoint", ckpt, other,
                       "--device", "cpu", "--threshold", t)
    assert code == 0
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert s["checkpoints"] == [str(ckpt), str(other)] and s["ensemble_members"] == 2
    assert s["checkpoint"] == f"{ckpt} + {other}"
    mask = np.array(Image.open(tmp_path / "out" / "s_mask.png")) > 0
    sure = ((mean - t).abs() > 1e-6).numpy()
    assert sure.mean() > 0.8 and 0.2 < mask.mean() < 0.8
    assert np.array_equal(mask[sure], (mean > t).numpy()[sure])


def test_checkpoints_of_different_input_sizes_are_refused(tmp_path, capsys, ckpt):
    from mambaseg.models import create_model

    model = create_model("unet", features=(4, 8, 16))
    model.input_size = 224
    small = model.save_pretrained(tmp_path / "small")
    img = _png(tmp_path / "in" / "s.png")
    code, _, err = run(capsys, "-i", img, "-o", tmp_path / "out", "--checkpoint", ckpt, small,
                       "--device", "cpu")
    assert code == 2 and str(ckpt) in err and str(small) in err and "input_size 224" in err
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- post-processing



def _slice(path: Path, box) -> Path:
    img = np.full((32, 32, 3), 40, np.uint8)
    r0, r1, c0, c1 = box
    img[r0:r1, c0:c1, 0] = 250
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)
    return path


def test_lcc_and_min_area_write_postprocessed_masks(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("mambaseg.inference.loading.load_models", lambda paths, dev: Bright())
    for i in (1, 2, 3):                                   # a 6x6 blob through slices 1-3
        _slice(tmp_path / "in" / "P1" / f"P1_{i}.png", (4, 10, 4, 10))
    _slice(tmp_path / "in" / "P1" / "P1_4.png", (24, 26, 24, 27))   # 6 px alone on slice 4
    args = ["-i", tmp_path / "in", "--checkpoint", tmp_path / "ck", "--batch-size", "1"]
    code, out, _ = run(capsys, *args, "-o", tmp_path / "lcc", "--lcc")
    assert code == 0 and "post-processing: 3-D largest component" in out and "6 predicted" in out
    masks = [np.array(Image.open(tmp_path / "lcc" / "P1" / f"P1_{i}_mask.png")) for i in range(1, 5)]
    assert [int((m > 0).sum()) for m in masks] == [36, 36, 36, 0]
    assert set(np.unique(masks[0])) == {0, 255}
    s = json.loads((tmp_path / "lcc" / "summary.json").read_text())
    assert s["postprocess"] == {"lcc": True, "min_volume": 0, "min_area": 0}
    assert s["postprocess_removed_pixels"] == 6
    code, _, _ = run(capsys, *args, "-o", tmp_path / "area", "--min-area", "7")
    m4 = np.array(Image.open(tmp_path / "area" / "P1" / "P1_4_mask.png"))
    assert code == 0 and (m4 > 0).sum() == 0
    code, _, _ = run(capsys, *args, "-o", tmp_path / "vol", "--lcc", "--min-volume", "6")
    m4 = np.array(Image.open(tmp_path / "vol" / "P1" / "P1_4_mask.png"))
    assert code == 0 and (m4 > 0).sum() == 6
    code, out, _ = run(capsys, *args, "-o", tmp_path / "raw")
    m4 = np.array(Image.open(tmp_path / "raw" / "P1" / "P1_4_mask.png"))
    assert code == 0 and (m4 > 0).sum() == 6 and "post-processing: none" in out


@pytest.mark.parametrize("args, message", [
    (["--min-area", "-1"], "--min-area must be 0 or more"),
    (["--lcc", "--min-volume", "-5"], "--min-volume must be 0 or more"),
    (["--no-postprocess", "--min-area", "3"], "cannot be combined"),
])
def test_bad_postprocess_options(tmp_path, capsys, ckpt, args, message):
    img = _png(tmp_path / "in" / "s.png")
    code, _, err = run(capsys, "-i", img, "-o", tmp_path / "out", "--checkpoint", ckpt, *args)
    assert code == 2 and message in err
    assert not (tmp_path / "out").exists()
