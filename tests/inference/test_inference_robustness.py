"""No silent garbage (issue #22) in predict: NaN/Inf images, multi-page files, output folders
that hold inputs, predicted masks taken for ground truth, forward-pass size limits."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from mambaseg.errors import DataError, MambasegError
from mambaseg.inference import predict as P
from toy_data import Bright

NAN_REASON = ("non-finite pixels (NaN/Inf): 400 of 1024; pass --nan-policy zero to replace them "
              "by 0")


def strict_json(text: str):
    """json.loads that refuses NaN / Infinity."""
    def refuse(name):
        raise AssertionError(f"bare {name} in JSON")

    return json.loads(text, parse_constant=refuse)


def _rgb(path: Path, h=32, w=32) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.full((h, w, 3), 40, np.uint8)
    img[4:12, 4:12, 0] = 250
    Image.fromarray(img).save(path)
    return path


def _nan_tif(path: Path) -> Path:
    """32x32 float32: bright (0.9) but for one dark pixel and a 20x20 NaN patch."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full((32, 32), 0.9, np.float32)
    arr[0, 0] = 0.0
    arr[6:26, 6:26] = np.nan
    tifffile.imwrite(path, arr)
    return path


def _run(src, out, **kw):
    return P.run_predict(src, out, model=Bright(), device="cpu", **kw)


# ----------------------------------------------------------------------------- NaN / Inf

def test_nan_image_in_a_folder_is_skipped_with_no_mask(tmp_path):
    _rgb(tmp_path / "in" / "good.png")
    _nan_tif(tmp_path / "in" / "nan.tif")
    res = _run(tmp_path / "in", tmp_path / "out")
    assert res.exit_status == 1
    assert res.skipped == [{"input": "nan.tif", "reason": NAN_REASON}]
    assert not (tmp_path / "out" / "nan_mask.png").exists()
    s = strict_json((tmp_path / "out" / "summary.json").read_text())
    assert s["skipped"][0]["reason"] == NAN_REASON and s["nan_policy"] == "error"


def test_nan_image_alone_is_an_error_and_writes_nothing(tmp_path):
    nan = _nan_tif(tmp_path / "in" / "nan.tif")
    with pytest.raises(DataError) as err:
        _run(nan, tmp_path / "out")
    assert str(err.value) == f"{nan}: {NAN_REASON}"
    assert not (tmp_path / "out").exists()


def test_nan_policy_zero_writes_a_mask_and_a_note(tmp_path):
    nan = _nan_tif(tmp_path / "in" / "nan.tif")
    res = _run(nan, tmp_path / "out", nan_policy="zero")
    assert res.exit_status == 0
    mask = np.array(Image.open(tmp_path / "out" / "nan_mask.png")) > 0
    assert not mask[6:26, 6:26].any() and mask[0, 5] and not mask[0, 0]  # NaN -> 0 -> dark
    s = strict_json((tmp_path / "out" / "summary.json").read_text())
    assert s["images"][0]["notes"].startswith("400 non-finite pixel(s) (NaN/Inf) replaced by 0")
    assert s["nan_policy"] == "zero"
    with pytest.raises(MambasegError, match="nan_policy"):
        _run(nan, tmp_path / "o2", nan_policy="median")


def test_segment_refuses_a_nan_array():
    arr = np.full((32, 32), 0.5, np.float32)
    arr[3, 3] = np.inf
    with pytest.raises(DataError, match=r"<array>: non-finite pixels \(NaN/Inf\): 1 of 1024"):
        P.segment(arr, model=Bright(), device="cpu")


# ----------------------------------------------------------------------------- multi-page

def test_multi_page_tiff_is_skipped_or_an_error_alone(tmp_path):
    _rgb(tmp_path / "in" / "good.png")
    stack = tmp_path / "in" / "stack.tif"
    tifffile.imwrite(stack, np.zeros((4, 32, 32), np.uint8), photometric="minisblack")
    res = _run(tmp_path / "in", tmp_path / "out")
    reason = "multi-page image (4 pages): mambaseg reads single 2-D slices"
    assert res.exit_status == 1 and res.skipped == [{"input": "stack.tif", "reason": reason}]
    assert not (tmp_path / "out" / "stack_mask.png").exists()
    with pytest.raises(DataError, match=r"stack.tif: multi-page image \(4 pages\)"):
        _run(stack, tmp_path / "out2")
    assert not (tmp_path / "out2").exists()


# ----------------------------------------------------------------------------- output folders

def test_output_folder_holding_an_input_image_is_refused(tmp_path):
    img = _rgb(tmp_path / "d" / "x.png")
    for src, out in ((img, tmp_path / "d"), (tmp_path / "d", tmp_path)):
        with pytest.raises(MambasegError, match=r"holds the input image .*x.png; predict never "
                                                r"writes its masks where"):
            _run(src, out)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["d", "x.png"]


def test_predicted_mask_is_never_taken_as_ground_truth(tmp_path):
    img = _rgb(tmp_path / "a" / "x.png")
    _run(img, tmp_path / "b")
    # a mask predict wrote lands beside the image (an old predict -i a/x.png -o a; a copy)
    shutil.copy(tmp_path / "b" / "x_mask.png", tmp_path / "a" / "x_mask.png")
    for src in (img, tmp_path / "a"):
        res = _run(src, tmp_path / f"c{src.is_file()}")
        assert "truth" not in res.written[0] and res.summary["dice"] is None
        assert any("x_mask.png: written by mambaseg predict, not taken as the ground truth"
                   in w for w in res.warnings)
    # without the PNG mark (older versions), a predict summary.json listing it says so
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "a" / "x_mask.png")
    assert _run(img, tmp_path / "d").summary["dice"] is not None   # a real truth: scored
    (tmp_path / "a" / "summary.json").write_text(json.dumps({"images": [
        {"input": "x.png", "mask": "x_mask.png"}]}))
    assert _run(img, tmp_path / "e").summary["dice"] is None


def test_predict_outputs_in_an_input_folder_are_not_inputs(tmp_path):
    _rgb(tmp_path / "a" / "x.png")
    _run(tmp_path / "a", tmp_path / "b", overlay=True, probabilities=True)
    with pytest.raises(DataError, match="no images found"):  # b: only predict's outputs
        _run(tmp_path / "b", tmp_path / "c")
    shutil.copy(tmp_path / "b" / "x_overlay.png", tmp_path / "a")
    res = _run(tmp_path / "a", tmp_path / "d")
    assert [r["input"] for r in res.written] == ["x.png"]
    assert any("x_overlay.png: written by mambaseg predict, not segmented" in w
               for w in res.warnings)


# ----------------------------------------------------------------------------- memory

def test_too_many_pixels_for_the_forward_pass(tmp_path, monkeypatch):
    from mambaseg.inference import predict_inputs

    big = _rgb(tmp_path / "in" / "big.png", 300, 290)
    _rgb(tmp_path / "in" / "small.png")
    # Bright declares no input size: 300 x 290 runs padded to 320 x 320 = 102,400 pixels
    res = _run(tmp_path / "in", tmp_path / "out", rescale=False, max_pixels=100_000)
    assert res.exit_status == 1 and [r["input"] for r in res.written] == ["small.png"]
    reason = res.skipped[0]["reason"]
    assert res.skipped[0]["input"] == "big.png"
    assert reason == ("320 x 320 (the 290 x 300 image padded) would need about 0.1 GB for the "
                      "forward pass, more than --max-pixels 100000 allows; resize it, leave "
                      "out --no-resize, or raise --max-pixels")
    assert not (tmp_path / "out" / "big_mask.png").exists()

    def no_decoding(path):
        raise AssertionError("decoded an image refused by its header")

    monkeypatch.setattr(predict_inputs, "decode", no_decoding)  # refused from the header alone
    with pytest.raises(DataError, match=r"big.png: 320 x 320 .* about 0.1 GB"):
        _run(big, tmp_path / "out2", rescale=False, max_pixels=100_000)
    assert not (tmp_path / "out2").exists()


def test_model_scale_makes_large_images_fine_and_batches_stay_under_the_limit(tmp_path):
    from mambaseg.inference.model_info import forward_size
    from mambaseg.inference.predict_inputs import batch_limit

    net = Bright()
    net.input_size = 64
    assert forward_size(net, 1000, 500, rescale=True) == (64, 32)
    assert forward_size(net, 1000, 500, rescale=False) == (1024, 512)
    assert batch_limit(net, (1000, 500, 3), 8, rescale=True, max_pixels=10**6) == 8
    assert batch_limit(net, (1000, 500, 3), 8, rescale=False, max_pixels=10**6) == 1
    assert batch_limit(net, (32, 32, 3), 8, rescale=False, max_pixels=3 * 1024) == 3
    _rgb(tmp_path / "in" / "big.png", 300, 290)
    res = P.run_predict(tmp_path / "in" / "big.png", tmp_path / "out", model=net,
                        device="cpu", max_pixels=64 * 64)
    assert res.exit_status == 0 and res.written[0]["size"] == [300, 290]
    with pytest.raises(MambasegError, match="--max-pixels must be at least 1"):
        _run(tmp_path / "in", tmp_path / "o2", max_pixels=0)


def test_pillow_decompression_bomb_becomes_a_skipped_input(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 200)  # Pillow refuses above 400 pixels
    _rgb(tmp_path / "in" / "bomb.png")
    tifffile.imwrite(tmp_path / "in" / "ok.tif", np.zeros((32, 32, 3), np.uint8))
    res = _run(tmp_path / "in", tmp_path / "out")
    assert [r["input"] for r in res.written] == ["ok.tif"]
    assert res.skipped[0]["input"] == "bomb.png"
    assert res.skipped[0]["reason"].startswith("image has more pixels than mambaseg decodes")
