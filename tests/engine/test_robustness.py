"""No silent garbage (issue #22), engine level: NaN/Inf images, multi-page files, output
folders that hold inputs, predicted masks taken for ground truth, forward-pass size limits,
non-finite training losses and strict JSON."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from mambaseg.engine import predict as P
from mambaseg.errors import DataError, MambasegError
from toy_data import Bright, make_toy_dataset, nan_loss_at

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
    from mambaseg.data import io

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

    monkeypatch.setattr(io, "decode", no_decoding)  # refused from the header alone
    with pytest.raises(DataError, match=r"big.png: 320 x 320 .* about 0.1 GB"):
        _run(big, tmp_path / "out2", rescale=False, max_pixels=100_000)
    assert not (tmp_path / "out2").exists()


def test_model_scale_makes_large_images_fine_and_batches_stay_under_the_limit(tmp_path):
    from mambaseg.engine.predict_inputs import batch_limit, forward_size

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


# ----------------------------------------------------------------------------- training

def test_train_epoch_flags_the_first_non_finite_step():
    from mambaseg.engine.loop import DeviceData, train_epoch

    data = DeviceData(torch.zeros(8, 3, 8, 8, dtype=torch.uint8),
                      torch.zeros(8, 1, 8, 8, dtype=torch.uint8))
    model = torch.nn.Conv2d(3, 1, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    calls = []

    def loss_fn(logits, y):
        calls.append(1)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y)
        return loss * math.nan if len(calls) == 3 else loss

    batches = list(torch.arange(8).split(2))
    t = train_epoch(model, data, batches, opt, loss_fn)
    assert t.bad_step == 3 and t.bad_batch == [4, 5]
    t = train_epoch(torch.nn.Conv2d(3, 1, 1), data, batches, opt,
                    torch.nn.functional.binary_cross_entropy_with_logits)
    assert t.bad_step is None and t.bad_batch is None


def test_nan_loss_stops_training_keeping_the_last_good_checkpoint(tmp_path, monkeypatch):
    from mambaseg.engine.checkpoint import load_train_state
    from mambaseg.engine.config import TrainConfig
    from mambaseg.engine.trainer import train

    toy = make_toy_dataset(tmp_path / "toy", per_patient=4)
    monkeypatch.setattr("mambaseg.engine.trainer.get_loss", nan_loss_at(2, 2))
    run = tmp_path / "run"
    cfg = TrainConfig(model="ulvm_unet", data=toy, out=run, epochs=3, batch_size=4, seed=0,
                      device="cpu", progress=False)
    with pytest.raises(MambasegError) as err:
        train(cfg)
    msg = str(err.value)
    assert "the training loss became NaN/Inf at epoch 2, step 2 of " in msg
    assert f"{run / 'last'} still holds epoch 1, the last good checkpoint" in msg
    assert "mambaseg data verify" in msg and "P" in msg.split("(batch of slices ")[1]
    assert load_train_state(run / "last")["epoch"] == 1
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [strict_json(line)["epoch"] for line in lines] == [1]
    strict_json((run / "config.json").read_text())


def test_nan_pixels_in_training_data_stop_at_loading(tmp_path):
    from mambaseg.engine.config import TrainConfig
    from mambaseg.engine.trainer import train

    toy = make_toy_dataset(tmp_path / "toy", per_patient=4)
    bad = toy / "P0" / "P0_1.png"
    bad.unlink()
    arr = np.random.default_rng(0).random((32, 32, 3), dtype=np.float32)
    arr[0:20, 0:20] = np.nan
    tifffile.imwrite(bad.with_suffix(".tif"), arr, photometric="rgb")
    cfg = TrainConfig(model="ulvm_unet", data=toy, out=tmp_path / "run", epochs=1,
                      batch_size=4, seed=0, device="cpu", progress=False)
    with pytest.raises(DataError, match=r"P0_1.tif: non-finite pixels \(NaN/Inf\): 400 of "
                                        r"1024; training never reads"):
        train(cfg)
    assert not (tmp_path / "run" / "last").exists()


# ----------------------------------------------------------------------------- strict JSON

def test_json_writers_never_write_bare_nan(tmp_path):
    from mambaseg.engine.evaluate import json_ready as from_evaluate
    from mambaseg.engine.progress import read_metrics, write_metrics
    from mambaseg.files import json_ready, to_json, write_json

    assert from_evaluate is json_ready
    obj = {"a": math.nan, "b": [np.float32(np.inf), -math.inf, 1.5], "c": np.int64(2),
           "d": Path("x")}
    write_json(tmp_path / "x.json", obj, default=str)
    assert strict_json((tmp_path / "x.json").read_text()) == {"a": None, "b": [None, None, 1.5],
                                                               "c": 2, "d": "x"}
    write_metrics(tmp_path / "m.jsonl", [{"epoch": 1, "train_loss": math.nan}])
    strict_json((tmp_path / "m.jsonl").read_text())
    assert read_metrics(tmp_path / "m.jsonl") == [{"epoch": 1, "train_loss": None}]
    with pytest.raises(ValueError):  # whatever slips past json_ready is refused, not written
        json.dumps(math.nan, allow_nan=False)
    assert to_json({"x": (math.nan,)}) == '{"x": [null]}'
