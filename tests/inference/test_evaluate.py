"""inference/runner.py, loading.py and evaluate.py: padding, devices, checkpoints, the summary."""
from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import torch

from mambaseg import metrics as M
from mambaseg.device import resolve_device
from mambaseg.errors import CheckpointError, MambasegError
from mambaseg.files import json_ready, prepare_dir
from mambaseg.inference import evaluate as E
from mambaseg.inference import loading as L
from mambaseg.inference import model_info
from mambaseg.inference import runner as I
from mambaseg.inference.predictions import load_predictions, predictions_path

S = 32  # synthetic slice size


class Oracle(torch.nn.Module):
    """Predicts tumour exactly where channel 0 of the image is bright (> 0.5)."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))
        self.seen: list[tuple[int, ...]] = []

    def forward(self, x):
        self.seen.append(tuple(x.shape))
        return (x[:, :1] - 0.5) * 40 * self.w


def _square(top, left, size):
    m = np.zeros((S, S), np.uint8)
    m[top:top + size, left:left + size] = 1
    return m


def _write_case(root, patient, index, pred, truth):
    """A kaggle-layout slice whose image encodes the oracle's prediction in channel 0."""
    folder = root / patient
    folder.mkdir(parents=True, exist_ok=True)
    image = np.zeros((S, S, 3), np.uint8)
    image[..., 0] = pred * 255
    image[..., 1] = 60
    tifffile.imwrite(folder / f"{patient}_{index}.tif", image)
    tifffile.imwrite(folder / f"{patient}_{index}_mask.tif", truth.astype(np.uint8) * 255)
    return f"{patient}/{patient}_{index}.tif"


@pytest.fixture
def synthetic(tmp_path):
    """20 slices of 2 patients with known (pred, truth) pairs, and a split file listing them."""
    root = tmp_path / "kaggle_3m"
    empty = np.zeros((S, S), np.uint8)
    cases = []  # (patient, pred, truth)
    for i in range(10):                     # patient A: squares offset by 2 px, 4 tumour-free
        if i < 6:
            cases.append(("TCGA_AA_0001", _square(4, 4, 8), _square(4, 6, 8)))
        else:
            cases.append(("TCGA_AA_0001", empty, empty))
    for i in range(10):                     # patient B: 2 missed, 2 false positives, 6 empty
        if i < 2:
            cases.append(("TCGA_BB_0002", empty, _square(10, 10, 4)))
        elif i < 4:
            cases.append(("TCGA_BB_0002", _square(0, 0, 3), empty))
        else:
            cases.append(("TCGA_BB_0002", empty, empty))
    rels = [_write_case(root, p, i % 10 + 1, pred, truth) for i, (p, pred, truth) in enumerate(cases)]
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": [], "val": [], "test": rels}))
    return root, split, cases


def _test_slices(root, split):
    from mambaseg.data.splits import resolve_split

    return resolve_split(root, str(split))["test"]


# ----------------------------------------------------------------------------- inference

def test_predict_probs_shapes_dtype_and_input_types():
    model = Oracle()
    x = torch.zeros(5, 3, S, S, dtype=torch.uint8)
    x[:, 0, :4] = 255
    p = I.predict_probs(model, x, batch_size=2)
    assert p.shape == (5, 1, S, S) and p.dtype == torch.float32 and p.device.type == "cpu"
    assert (p[:, :, :4] > 0.99).all() and (p[:, :, 4:] < 0.01).all()
    assert torch.equal(p, I.predict_probs(model, x.float() / 255, batch_size=5))
    assert [s[0] for s in model.seen] == [2, 2, 1, 2, 2, 1]   # on the CPU at most CPU_BATCH = 2


def test_predict_probs_pads_to_valid_size_and_crops_back():
    from mambaseg.models import create_model

    model = create_model("unet", features=(4, 8, 16))          # sizes: multiples of 4, >= 8
    seen = []
    model.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape)))
    x = torch.randint(0, 256, (2, 3, 250, 301), dtype=torch.uint8)
    p = I.predict_probs(model, x, rescale=False)
    assert p.shape == (2, 1, 250, 301)
    assert seen == [(2, 3, 252, 304)]
    assert ((p >= 0) & (p <= 1)).all()
    # at the model's training scale (input_size 256): 213x256, padded to 216x256
    p = I.predict_probs(model, x)
    assert p.shape == (2, 1, 250, 301) and seen[1:] == [(2, 3, 216, 256)]


def test_zero_padding_does_not_change_the_cropped_result():
    model = Oracle()                                           # no valid_size: multiples of 32
    x = torch.randint(0, 256, (1, 3, 20, 45), dtype=torch.uint8)
    p = I.predict_probs(model, x)
    assert model.seen == [(1, 3, 32, 64)]
    assert torch.allclose(p, torch.sigmoid((x[:, :1].float() / 255 - 0.5) * 40))


def test_model_check_input_names_the_nearest_valid_size():
    from mambaseg.models import create_model

    model = create_model("unet", features=(4, 8, 16))
    with pytest.raises(MambasegError, match="nearest valid size is 252x300"):
        model.check_input(torch.zeros(1, 3, 250, 301))
    assert model_info.valid_size(model, 250, 301) == (252, 304)
    assert model_info.valid_size(Oracle(), 250, 301) == (256, 320)


def test_resolve_device():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(MambasegError, match="unknown device"):
        resolve_device("tpu0")
    if not torch.cuda.is_available():
        with pytest.raises(MambasegError, match="CUDA is not available"):
            resolve_device("cuda")


def test_load_checkpoint_errors(tmp_path):
    from mambaseg.models import create_model

    with pytest.raises(CheckpointError, match="does not exist"):
        L.load_checkpoint(tmp_path / "nope")
    good = create_model("unet", features=(4, 8)).save_pretrained(tmp_path / "good")
    assert model_info.model_name(L.load_checkpoint(good)) == "unet"
    weights = tmp_path / "good" / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])                 # truncated
    with pytest.raises(CheckpointError, match="good"):
        L.load_checkpoint(good)


def test_prepare_dir_under_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(MambasegError, match="is a file"):
        prepare_dir(tmp_path / "f" / "out")
    assert prepare_dir(tmp_path / "a" / "b").is_dir()
    assert list((tmp_path / "a" / "b").iterdir()) == []       # probe file removed


# ----------------------------------------------------------------------------- evaluate

def test_evaluate_slices_hand_computed(synthetic):
    root, split, cases = synthetic
    slices = _test_slices(root, split)
    ev = E.evaluate_slices(Oracle(), slices, batch_size=4, n_boot=500)
    s = ev.summary
    per = s["per_slice"]
    assert [r["rel"] for r in per] == [x.rel for x in slices]
    # patient A tumour slices: 8x8 squares offset by 2 -> tp 48, fp 16, fn 16
    assert [(r["tp"], r["fp"], r["fn"]) for r in per[:6]] == [(48, 16, 16)] * 6
    assert [(r["tp"], r["fp"], r["fn"]) for r in per[10:14]] == [(0, 0, 16)] * 2 + [(0, 9, 0)] * 2
    assert all(r["dice"] == 1.0 for r in per[6:10] + per[14:])
    assert [r["hd95"] for r in per[:6]] == pytest.approx([2.0] * 6)
    assert [r["hd95_pooled"] for r in per[:6]] == pytest.approx([2.0] * 6)
    assert all(r["hd95"] is None and r["hd95_pooled"] is None for r in per[6:])

    d = 96 / 128                                                # 2*48 / (2*48 + 16 + 16)
    # dice_paper: batch 1 = slices 0..15, batch 2 = 16..19 (all empty -> 1)
    b1 = 2 * 288 / (2 * 288 + 96 + 18 + 96 + 32)
    assert s["dice_paper"]["batches"] == pytest.approx([b1, 1.0])
    assert s["dice_paper"]["mean"] == pytest.approx((b1 + 1) / 2)
    assert s["dice_paper"]["n_empty_batches"] == 1
    assert s["dice_slice"]["mean"] == pytest.approx((6 * d + 4 + 0 + 0 + 6) / 20)
    assert s["dice_slice"]["tumour_mean"] == pytest.approx(6 * d / 8)
    pa = 2 * 288 / (2 * 288 + 96 + 96)
    pb = 0.0                                                    # tp 0, fp 18, fn 32
    assert [p["dice"] for p in s["per_patient"]] == pytest.approx([pa, pb])
    assert [p["slices"] for p in s["per_patient"]] == [10, 10]
    assert s["dice_patient"]["mean"] == pytest.approx((pa + pb) / 2)
    assert s["dice_global"]["mean"] == pytest.approx(b1)
    assert s["iou"]["mean"] == pytest.approx(288 / (288 + 114 + 128))
    assert s["precision"]["mean"] == pytest.approx(288 / (288 + 114))
    assert s["recall"]["mean"] == pytest.approx(288 / (288 + 128))
    assert s["hd95"]["mean"] == pytest.approx(2.0)
    assert s["hd95"]["n"] == 6 and s["hd95"]["n_empty_prediction"] == 2
    assert s["hd95"]["definition"] == "max_directed"
    assert s["hd95_pooled"] == {**s["hd95"], "definition": "pooled"}    # squares: both give 2
    assert s["fpr_empty"]["n_empty_slices"] == 12
    assert s["fpr_empty"]["mean"] == pytest.approx(2 / 12)
    assert s["fpr_empty"]["mean_predicted_pixels"] == pytest.approx(18 / 12)


def test_summary_numbers_recompute_from_the_tables(synthetic):
    root, split, _ = synthetic
    s = E.evaluate_slices(Oracle(), _test_slices(root, split), n_boot=200).summary
    tp, fp, fn = (np.array([r[k] for r in s["per_slice"]]) for k in ("tp", "fp", "fn"))
    again = M.summarize(tp, fp, fn, [r["patient"] for r in s["per_slice"]],
                        [r["hd95"] for r in s["per_slice"]], n_boot=200,
                        hd_pooled=[r["hd95_pooled"] for r in s["per_slice"]])
    for key in (*E.METRIC_KEYS, "hd95_pooled"):
        assert again[key] == s[key]
    assert sum(p["tp"] for p in s["per_patient"]) == tp.sum()


def test_run_evaluation_writes_summary_and_predictions(synthetic, tmp_path):
    from mambaseg.models import create_model

    root, split, _ = synthetic
    ckpt = create_model("unet", features=(4, 8)).save_pretrained(tmp_path / "ckpt")
    summary, out = E.run_evaluation(root, checkpoint=ckpt, split=str(split), device="cpu",
                                    save_predictions=True, n_boot=100)
    assert out == ckpt / "summary.json"
    data = json.loads(out.read_text())
    for key in E.METRIC_KEYS:
        assert "mean" in data[key]
    for key in ("model", "parameters", "checkpoint", "split", "part", "n_slices", "n_patients",
                "threshold", "device", "per_slice", "per_patient"):
        assert key in data
    assert data["model"] == "unet" and data["n_slices"] == 20 and data["n_patients"] == 2
    pred = load_predictions(ckpt / "predictions.npz")
    assert pred["masks"].shape == (20, S, S) and pred["masks"].dtype == np.uint8
    assert list(pred["rel"]) == [r["rel"] for r in data["per_slice"]]
    fp_total = sum(r["fp"] + r["tp"] for r in data["per_slice"])
    assert int(pred["masks"].sum()) == fp_total

    with pytest.raises(MambasegError, match="--overwrite"):
        E.run_evaluation(root, checkpoint=ckpt, split=str(split), device="cpu", n_boot=100)
    E.run_evaluation(root, checkpoint=ckpt, split=str(split), device="cpu", overwrite=True,
                     n_boot=100)


def test_run_evaluation_failure_writes_nothing(synthetic, tmp_path):
    from mambaseg.models import create_model

    root, split, _ = synthetic
    ckpt = create_model("unet", features=(4, 8)).save_pretrained(tmp_path / "ckpt")
    before = sorted(p.name for p in ckpt.iterdir())
    with pytest.raises(MambasegError):
        E.run_evaluation(root, checkpoint=ckpt, split=str(split), part="val", device="cpu")
    with pytest.raises(MambasegError):
        E.run_evaluation(tmp_path / "missing", checkpoint=ckpt, split=str(split))
    assert sorted(p.name for p in ckpt.iterdir()) == before


def test_output_names():
    assert E.default_out("c", "test").as_posix() == "c/summary.json"
    assert E.default_out("c", "val").as_posix() == "c/summary-val.json"
    assert predictions_path("c/summary-val.json").as_posix() == "c/predictions-val.npz"
    assert predictions_path("c/out.json").as_posix() == "c/out-predictions.npz"
    assert json_ready({"a": [float("nan"), np.float32(1.5)]}) == {"a": [None, 1.5]}


# ----------------------------------------------------------------------------- post-processing

def _blob(cells):
    m = np.zeros((S, S), np.uint8)
    for r, c in cells:
        m[r, c] = 1
    return m


@pytest.fixture
def blobs(tmp_path):
    """Patient A: an 8x8 tumour on slices 1-3 predicted exactly, a 4-pixel false blob alone on
    slice 4 and 3 stray pixels on slice 5 (both tumour-free, isolated in 3-D); patient B: a
    6x6 tumour on 2 slices, predicted exactly (smaller than A's: merging the patients into one
    volume would drop it)."""
    root = tmp_path / "kaggle_3m"
    empty = np.zeros((S, S), np.uint8)
    big, small = _square(4, 4, 8), _square(24, 24, 2)
    stray = _blob([(28, 0), (28, 1), (29, 0)])
    cases = [("TCGA_AA_0001", big, big)] * 3 + [("TCGA_AA_0001", small, empty),
                                                  ("TCGA_AA_0001", stray, empty)]
    cases += [("TCGA_BB_0002", _square(10, 10, 6), _square(10, 10, 6))] * 2
    idx = [1, 2, 3, 4, 5, 1, 2]
    rels = [_write_case(root, p, i, pred, truth) for i, (p, pred, truth) in zip(idx, cases)]
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": [], "val": [], "test": rels}))
    return root, split


def test_lcc_removes_isolated_false_positives_per_patient(blobs):
    from mambaseg.inference.postprocess import PostProcess

    root, split = blobs
    slices = _test_slices(root, split)
    raw = E.evaluate_slices(Oracle(), slices, batch_size=1, n_boot=50).summary
    s = E.evaluate_slices(Oracle(), slices, batch_size=1, n_boot=50,
                          postprocess=PostProcess(lcc=True)).summary
    # raw: A tp 192, fp 4 + 3; B tp 72
    assert [(p["tp"], p["fp"], p["fn"]) for p in raw["per_patient"]] == [(192, 7, 0), (72, 0, 0)]
    assert [(p["tp"], p["fp"], p["fn"]) for p in s["per_patient"]] == [(192, 0, 0), (72, 0, 0)]
    assert raw["dice_patient"]["mean"] == pytest.approx((384 / 391 + 1) / 2)
    assert s["dice_patient"]["mean"] == pytest.approx(1.0)
    assert s["dice_patient"]["mean"] - raw["dice_patient"]["mean"] == pytest.approx(7 / 782)
    assert s["dice_global"]["mean"] - raw["dice_global"]["mean"] == pytest.approx(1 - 528 / 535)
    assert s["fpr_empty"]["mean"] == 0.0 and raw["fpr_empty"]["mean"] == 1.0
    # the raw numbers are kept beside the post-processed ones
    w = s["without_postprocess"]
    assert w["dice_patient"]["mean"] == pytest.approx(raw["dice_patient"]["mean"])
    assert w["dice_global"]["mean"] == pytest.approx(528 / 535)
    assert w["dice_slice"]["mean"] == pytest.approx(5 / 7)
    assert w["fpr_empty"] == raw["fpr_empty"]
    assert s["postprocess"] == {"lcc": True, "min_volume": 0, "min_area": 0}
    assert "without_postprocess" not in raw and raw["postprocess"]["lcc"] is False


def test_min_area_and_min_volume(blobs):
    from mambaseg.inference.postprocess import PostProcess

    root, split = blobs
    slices = _test_slices(root, split)
    for pp in (PostProcess(min_area=4), PostProcess(lcc=True, min_volume=4)):
        ev = E.evaluate_slices(Oracle(), slices, n_boot=50, postprocess=pp,
                               keep_predictions=True)
        per = ev.summary["per_slice"]
        assert [r["fp"] for r in per] == [0, 0, 0, 4, 0, 0, 0]     # the 3 stray pixels emptied
        assert ev.summary["fpr_empty"]["mean"] == 0.5
        assert ev.summary["dice_global"]["mean"] == pytest.approx(528 / 532)
        masks = np.unpackbits(ev.packed, axis=-1, count=S).reshape(ev.shape)
        assert masks[4].sum() == 0 and masks[3].sum() == 4         # saved predictions too


def test_run_evaluation_with_two_checkpoints_and_a_recommended_postprocess(blobs, tmp_path):
    from mambaseg.inference.postprocess import PostProcess
    from mambaseg.models import create_model

    root, split = blobs
    torch.manual_seed(0)
    a = create_model("unet", features=(4, 8)).save_pretrained(
        tmp_path / "a", metadata={"postprocess": {"lcc": True}})
    b = create_model("unet", features=(4, 8)).save_pretrained(tmp_path / "b")
    s, out = E.run_evaluation(root, checkpoint=a, split=str(split), device="cpu", n_boot=20)
    assert s["postprocess"]["lcc"] is True and s["postprocess_source"] == "checkpoint"
    assert s["checkpoint"] == str(a) and s["checkpoints"] == [str(a)]
    s, out = E.run_evaluation(root, checkpoint=[a, b], split=str(split), device="cpu",
                              n_boot=20, overwrite=True, postprocess=None)
    assert out == a / "summary.json" and s["checkpoints"] == [str(a), str(b)]
    assert s["ensemble_members"] == 2 and s["postprocess_source"] == "none"
    assert s["parameters"] == 2 * sum(p.numel() for p in create_model("unet", features=(4, 8)).parameters())
    s, _ = E.run_evaluation(root, checkpoint=[a, b], split=str(split), device="cpu", n_boot=20,
                            overwrite=True, postprocess=PostProcess(min_area=2))
    assert s["postprocess"]["min_area"] == 2 and s["postprocess_source"] == "options"


# ----------------------------------------------------------------------------- a run's record

@pytest.mark.usefixtures("one_thread")
def test_run_config_records_the_checkpoint_its_evaluation_uses(tmp_path):
    """config.json's evaluation_checkpoint is what `evaluate --checkpoint RUN_DIR` evaluates:
    best/ when the run has one, last/ when best was asked for but no epoch had a validation
    score (its `checkpoint` setting then still says best)."""
    from toy_data import make_toy_dataset
    from mambaseg.data import find_slices
    from mambaseg.training.config import TrainConfig
    from mambaseg.training.trainer import train

    data = make_toy_dataset(tmp_path / "toy", patients=2, per_patient=4)
    rels = [s.rel for s in find_slices(data)]
    for name, val, expected in (("with_val", rels[4:6], "best"), ("no_val", [], "last")):
        split = tmp_path / f"{name}.json"
        split.write_text(json.dumps({"train": rels[:4], "val": val, "test": rels[6:]}))
        result = train(TrainConfig(model="ulvm_unet", data=data, split=str(split),
                                   out=tmp_path / name, epochs=2, batch_size=4, seed=0,
                                   device="cpu", progress=False))
        config = json.loads((result.run_dir / "config.json").read_text())
        assert config["checkpoint"] == "best"                         # the setting asked for
        assert config["evaluation_checkpoint"] == expected == result.checkpoint_dir.name
        assert config["evaluation_epoch"] == (result.best_epoch if val else 2)
        summary, _ = E.run_evaluation(None, checkpoint=result.run_dir, device="cpu", n_boot=10,
                                      out=tmp_path / f"{name}-summary.json")
        assert summary["checkpoint"] == str(result.run_dir / expected)
