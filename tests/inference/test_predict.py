"""inference/predict.py: inputs, output names, overlays, run_predict and segment()."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from mambaseg.inference import predict as P
from mambaseg.errors import DataError, MambasegError
from mambaseg.inference.predict_inputs import output_paths, overlay_image
from toy_data import Bright

SAMPLE = Path(__file__).resolve().parents[2] / "examples" / "lgg-sample"




def _rgb(h, w, bright=None):
    img = np.full((h, w, 3), 40, np.uint8)
    if bright is not None:
        r0, r1, c0, c1 = bright
        img[r0:r1, c0:c1, 0] = 250
    return img


def test_collect_inputs_folder_skips_masks_and_pairs_truth(tmp_path):
    (tmp_path / "p1").mkdir()
    tifffile.imwrite(tmp_path / "p1" / "p1_1.tif", _rgb(8, 8))
    tifffile.imwrite(tmp_path / "p1" / "p1_1_mask.tif", np.zeros((8, 8), np.uint8))
    Image.fromarray(_rgb(8, 8)).save(tmp_path / "b.png")
    (tmp_path / "notes.txt").write_text("not an image")
    items, warnings = P.collect_inputs(tmp_path)
    assert sorted(i.rel for i in items) == ["b.png", "p1/p1_1.tif"]
    truth = {i.rel: i.truth for i in items}
    assert truth["p1/p1_1.tif"].name == "p1_1_mask.tif" and truth["b.png"] is None
    single, _ = P.collect_inputs(tmp_path / "p1" / "p1_1.tif")
    assert [(i.rel, i.truth.name) for i in single] == [("p1_1.tif", "p1_1_mask.tif")]
    with pytest.raises(DataError, match="does not exist"):
        P.collect_inputs(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        P.collect_inputs(tmp_path / "empty")


def test_output_paths_keep_folders_and_drop_the_extension(tmp_path):
    paths = output_paths(tmp_path, "a/b/x.y.tif", probabilities=True, overlay=True)
    assert {k: p.relative_to(tmp_path).as_posix() for k, p in paths.items()} == {
        "mask": "a/b/x.y_mask.png", "prob": "a/b/x.y_prob.png", "overlay": "a/b/x.y_overlay.png"}
    assert list(output_paths(tmp_path, "noext")) == ["mask"]


def test_overlay_tints_the_mask_and_draws_a_red_contour():
    img = np.full((10, 10), 100, np.uint8)
    mask = np.zeros((10, 10), bool)
    mask[2:8, 2:8] = True
    out = overlay_image(img, mask)
    assert out.shape == (10, 10, 3) and out.dtype == np.uint8
    assert tuple(out[2, 2]) == (255, 0, 0)                     # contour
    assert out[4, 4, 0] > 100 and out[4, 4, 1] < 100           # tinted inside
    assert tuple(out[0, 0]) == (100, 100, 100)                 # untouched outside


def test_run_predict_odd_size_gray_rgba_and_unreadable(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(_rgb(250, 300, (10, 20, 30, 50))).save(src / "odd.png")
    Image.fromarray(np.full((40, 40), 200, np.uint8)).save(src / "gray.png")
    Image.fromarray(np.dstack([_rgb(40, 40), np.full((40, 40), 255, np.uint8)])).save(src / "rgba.png")
    (src / "broken.tif").write_bytes(b"II*\x00garbage")
    res = P.run_predict(src, tmp_path / "out", model=Bright(), device="cpu")
    assert res.exit_status == 1
    assert [s["input"] for s in res.skipped] == ["broken.tif"]
    mask = np.array(Image.open(tmp_path / "out" / "odd_mask.png"))
    assert mask.shape == (250, 300) and mask.dtype == np.uint8
    assert set(np.unique(mask)) == {0, 255} and int((mask > 0).sum()) == 10 * 20
    notes = {r["input"]: r["notes"] for r in res.written}
    assert "grayscale" in notes["gray.png"] and "alpha" in notes["rgba.png"]
    assert notes["odd.png"] is None
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["counts"] == {"inputs": 4, "written": 3, "skipped": 1, "converted": 2,
                                 "with_truth": 0}
    assert summary["dice"] is None
    assert {r["input"]: r["tumour_pixels"] for r in summary["images"]}["odd.png"] == 200


def test_run_predict_dice_against_masks_beside_images(tmp_path):
    src = tmp_path / "in" / "pat"
    src.mkdir(parents=True)
    tifffile.imwrite(src / "pat_1.tif", _rgb(32, 32, (0, 4, 0, 4)))       # predicts 16 px
    truth = np.zeros((32, 32), np.uint8)
    truth[0:4, 0:2] = 255                                                  # 8 px, inside
    tifffile.imwrite(src / "pat_1_mask.tif", truth)
    tifffile.imwrite(src / "pat_2.tif", _rgb(32, 32))                     # empty, empty
    tifffile.imwrite(src / "pat_2_mask.tif", np.zeros((32, 32), np.uint8))
    res = P.run_predict(tmp_path / "in", tmp_path / "out", model=Bright(), device="cpu")
    d = res.summary["dice"]
    assert d["n"] == 2 and d["n_tumour"] == 1
    assert d["pooled"] == pytest.approx(2 * 8 / (16 + 8))
    assert d["slice_mean"] == pytest.approx((2 * 8 / 24 + 1.0) / 2)
    assert (tmp_path / "out" / "pat" / "pat_1_mask.png").is_file()


def test_run_predict_refusals_write_nothing(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(_rgb(32, 32)).save(src / "a.png")
    with pytest.raises(MambasegError, match="inside the input"):
        P.run_predict(src, src / "out", model=Bright(), device="cpu")
    with pytest.raises(MambasegError, match="inside the input"):
        P.run_predict(src, src, model=Bright(), device="cpu")
    assert sorted(p.name for p in src.iterdir()) == ["a.png"]
    out = tmp_path / "out"
    P.run_predict(src, out, model=Bright(), device="cpu", overlay=True)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    with pytest.raises(MambasegError, match="--overwrite"):
        P.run_predict(src, out, model=Bright(), device="cpu", overlay=True, probabilities=True)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    P.run_predict(src, out, model=Bright(), device="cpu", probabilities=True, overwrite=True)
    assert (out / "a_prob.png").is_file()


def test_segment_arrays_paths_and_lists(tmp_path):
    img = _rgb(50, 70, (5, 15, 5, 25))
    mask = P.segment(img, model=Bright(), device="cpu")
    assert mask.shape == (50, 70) and mask.dtype == np.uint8 and int(mask.sum()) == 200
    Image.fromarray(img).save(tmp_path / "x.png")
    masks = P.segment([tmp_path / "x.png", str(tmp_path / "x.png"), img.astype(np.float32) / 255],
                      model=Bright(), device="cpu")
    assert len(masks) == 3 and all(np.array_equal(m, mask) for m in masks)
    probs = P.segment(img, model=Bright(), device="cpu", return_probs=True)
    assert probs.dtype == np.float32 and probs.shape == (50, 70)
    gray = P.segment(img[:, :, 0], model=Bright(), device="cpu")
    assert gray.shape == (50, 70)


def test_segment_with_a_checkpoint_directory(tmp_path):
    from mambaseg.models import create_model

    ckpt = create_model("unet", features=(4, 8)).save_pretrained(tmp_path / "ckpt")
    mask = P.segment(_rgb(33, 31), model=str(ckpt), device="cpu")
    assert mask.shape == (33, 31)


@pytest.mark.skipif(not (SAMPLE / "kaggle_3m").is_dir(), reason="bundled sample not present")
def test_sample_kaggle_root_inputs():
    items, _ = P.collect_inputs(SAMPLE)
    assert items and all("_mask" not in Path(i.rel).stem for i in items)
    assert all(i.truth is not None for i in items)
    assert all(i.rel.startswith("kaggle_3m/") for i in items)


# ----------------------------------------------------------------------------- post-processing

def _patient_folder(src):
    """``P1``: a 6x6 blob on slices 1-3, a 2x2 blob alone on slice 4 (isolated in 3-D) and 3
    stray pixels on slice 5; a loose image in the root with only a 2x2 blob (its own group)."""
    (src / "P1").mkdir(parents=True)
    for i in (1, 2, 3):
        Image.fromarray(_rgb(32, 32, (4, 10, 4, 10))).save(src / "P1" / f"P1_{i}.png")
    Image.fromarray(_rgb(32, 32, (24, 26, 24, 26))).save(src / "P1" / "P1_4.png")
    stray = _rgb(32, 32)
    stray[28, 0, 0] = stray[28, 1, 0] = stray[29, 0, 0] = 250
    Image.fromarray(stray).save(src / "P1" / "P1_5.png")
    Image.fromarray(_rgb(32, 32, (0, 2, 0, 2))).save(src / "loose.png")


def _mask(path):
    return np.array(Image.open(path)) > 0


def test_run_predict_postprocesses_each_patient_as_one_volume(tmp_path):
    from mambaseg.inference.postprocess import PostProcess

    _patient_folder(tmp_path / "in")
    out = tmp_path / "out"
    res = P.run_predict(tmp_path / "in", out, model=Bright(), device="cpu", batch_size=1,
                        postprocess=PostProcess(lcc=True))
    assert _mask(out / "P1" / "P1_2_mask.png").sum() == 36
    assert _mask(out / "P1" / "P1_4_mask.png").sum() == 0      # cut although batch_size=1
    assert _mask(out / "P1" / "P1_5_mask.png").sum() == 0
    assert _mask(out / "loose_mask.png").sum() == 4            # its own group: kept
    s = json.loads((out / "summary.json").read_text())
    assert s["postprocess"] == {"lcc": True, "min_volume": 0, "min_area": 0}
    assert s["postprocess_source"] == "options" and s["postprocess_removed_pixels"] == 7
    pixels = {r["input"]: r["tumour_pixels"] for r in res.written}
    assert pixels == {"P1/P1_1.png": 36, "P1/P1_2.png": 36, "P1/P1_3.png": 36,
                      "P1/P1_4.png": 0, "P1/P1_5.png": 0, "loose.png": 4}
    raw = P.run_predict(tmp_path / "in", tmp_path / "raw", model=Bright(), device="cpu")
    assert raw.summary["postprocess_source"] == "none"
    assert _mask(tmp_path / "raw" / "P1" / "P1_4_mask.png").sum() == 4


def test_run_predict_min_area_and_the_recommended_default(tmp_path):
    from mambaseg.inference.postprocess import PostProcess

    _patient_folder(tmp_path / "in")
    out = tmp_path / "out"
    P.run_predict(tmp_path / "in", out, model=Bright(), device="cpu",
                  postprocess=PostProcess(min_area=4))
    assert _mask(out / "P1" / "P1_5_mask.png").sum() == 0      # 3 stray pixels < 4
    assert _mask(out / "P1" / "P1_4_mask.png").sum() == 4
    model = Bright()
    model.checkpoint_config = {"metadata": {"postprocess": {"lcc": True}}}
    res = P.run_predict(tmp_path / "in", tmp_path / "o2", model=model, device="cpu")
    assert res.summary["postprocess_source"] == "checkpoint"
    assert _mask(tmp_path / "o2" / "P1" / "P1_4_mask.png").sum() == 0
    res = P.run_predict(tmp_path / "in", tmp_path / "o3", model=model, device="cpu",
                        postprocess=None)
    assert _mask(tmp_path / "o3" / "P1" / "P1_4_mask.png").sum() == 4


def test_segment_postprocesses_the_inputs_as_one_volume():
    from mambaseg.inference.postprocess import PostProcess

    imgs = [_rgb(32, 32, (4, 10, 4, 10)), _rgb(32, 32, (4, 10, 4, 10)), _rgb(32, 32, (24, 26, 24, 26))]
    masks = P.segment(imgs, model=Bright(), device="cpu", postprocess=PostProcess(lcc=True))
    assert [int(m.sum()) for m in masks] == [36, 36, 0] and masks[0].dtype == np.uint8
    assert [int(m.sum()) for m in P.segment(imgs, model=Bright(), device="cpu")] == [36, 36, 4]
    with pytest.raises(MambasegError, match="return_probs"):
        P.segment(imgs, model=Bright(), device="cpu", return_probs=True,
                  postprocess=PostProcess(lcc=True))
