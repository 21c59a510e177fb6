"""`mambaseg evaluate` through mambaseg.cli.main: summary.json, table, refusals, user errors."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from mambaseg.cli import main
from mambaseg.inference.evaluate import METRIC_KEYS
from mambaseg.inference.predictions import load_predictions

S = 32


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, Path]:
    """3 patients x 6 slices of 32x32 (tumour squares on half of them) and a split file."""
    base = tmp_path_factory.mktemp("data")
    root = base / "kaggle_3m"
    rng = np.random.default_rng(0)
    rels = []
    for p in range(3):
        patient = f"TCGA_XX_000{p}"
        (root / patient).mkdir(parents=True)
        for i in range(1, 7):
            image = rng.integers(0, 256, (S, S, 3), dtype=np.uint8)
            mask = np.zeros((S, S), np.uint8)
            if i % 2:
                mask[8:8 + 2 * i, 10:20] = 255
            tifffile.imwrite(root / patient / f"{patient}_{i}.tif", image)
            tifffile.imwrite(root / patient / f"{patient}_{i}_mask.tif", mask)
            rels.append(f"{patient}/{patient}_{i}.tif")
    split = base / "split.json"
    split.write_text(json.dumps({"train": rels[:6], "val": rels[6:8], "test": rels[8:]}))
    return base, split


@pytest.fixture
def ckpt(tmp_path) -> Path:
    from mambaseg.models import create_model

    torch.manual_seed(0)
    return create_model("unet", features=(4, 8)).save_pretrained(tmp_path / "run" / "last")


def run(capsys, *args) -> tuple[int, str, str]:
    code = main(["evaluate", *map(str, args)])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def _listing(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def test_evaluate_writes_summary_table_and_predictions(dataset, ckpt, capsys):
    data, split = dataset
    code, out, _ = run(capsys, "--checkpoint", ckpt, "--data", data, "--split", split,
                       "--device", "cpu", "--save-predictions", "--no-progress")
    assert code == 0
    for key in METRIC_KEYS:
        assert key in out
    assert "95% CI" in out and "wrote" in out
    s = json.loads((ckpt / "summary.json").read_text())
    for key in METRIC_KEYS:
        assert "mean" in s[key]
    assert len(s["dice_patient"]["ci95"]) == 2 and "median" in s["dice_patient"]
    for key in ("model", "parameters", "checkpoint", "split", "part", "n_slices", "n_patients",
                "threshold", "device"):
        assert key in s
    assert (s["part"], s["n_slices"], s["n_patients"], s["device"]) == ("test", 10, 2, "cpu")
    assert s["model_input_size"] == 256  # the scale the slices are resized to (and back)
    assert [r["rel"] for r in s["per_slice"]] == json.loads(split.read_text())["test"]
    assert set(s["per_slice"][0]) >= {"rel", "patient", "tp", "fp", "fn", "dice"}
    assert set(s["per_patient"][0]) >= {"patient", "tp", "fp", "fn", "dice", "slices"}
    assert sum(p["slices"] for p in s["per_patient"]) == 10
    pred = load_predictions(ckpt / "predictions.npz")
    assert pred["masks"].shape == (10, S, S)
    assert int(pred["masks"].sum()) == sum(r["tp"] + r["fp"] for r in s["per_slice"])


def test_refuses_to_overwrite_then_overwrites(dataset, ckpt, capsys):
    data, split = dataset
    args = ["--checkpoint", ckpt, "--data", data, "--split", split, "--device", "cpu"]
    assert run(capsys, *args)[0] == 0
    before = (ckpt / "summary.json").read_text()
    code, _, err = run(capsys, *args)
    assert code == 2 and "--overwrite" in err
    assert (ckpt / "summary.json").read_text() == before
    assert run(capsys, *args, "--overwrite")[0] == 0


def test_out_and_part(dataset, ckpt, capsys, tmp_path):
    data, split = dataset
    code, _, _ = run(capsys, "--checkpoint", ckpt, "--data", data, "--split", split,
                     "--part", "val", "--device", "cpu")
    assert code == 0 and (ckpt / "summary-val.json").is_file()
    out = tmp_path / "reports" / "v.json"
    code, _, _ = run(capsys, "--checkpoint", ckpt, "--data", data, "--split", split,
                     "--out", out, "--device", "cpu", "--save-predictions")
    assert code == 0 and out.is_file() and (out.parent / "v-predictions.npz").is_file()


def test_split_and_data_default_to_the_training_run(dataset, ckpt, capsys):
    data, split = dataset
    (ckpt.parent / "config.json").write_text(json.dumps(
        {"model": "unet", "data": str(data), "split": str(split), "split_seed": None}))
    code, _, _ = run(capsys, "--checkpoint", ckpt, "--device", "cpu")
    assert code == 0
    s = json.loads((ckpt / "summary.json").read_text())
    assert s["split"] == str(split) and s["n_slices"] == 10


def _run_dir(tmp_path, data, split, checkpoint=None) -> Path:
    """A training run folder: the run's config.json, and last/ and best/ of different weights."""
    from mambaseg.models import create_model

    run_dir = tmp_path / "run"
    for seed, name in ((1, "last"), (2, "best")):
        torch.manual_seed(seed)
        create_model("unet", features=(4, 8)).save_pretrained(run_dir / name)
    cfg = {"model": "unet", "data": str(data), "split": str(split), "split_seed": None}
    if checkpoint:
        cfg["checkpoint"] = checkpoint
    (run_dir / "config.json").write_text(json.dumps(cfg))
    return run_dir


def test_checkpoint_run_dir_uses_its_best(dataset, capsys, tmp_path):
    data, split = dataset
    run_dir = _run_dir(tmp_path, data, split)
    code, _, err = run(capsys, "--checkpoint", run_dir, "--device", "cpu")
    assert code == 0
    assert f"note: {run_dir} is a training run: using its checkpoint {run_dir / 'best'}" in err
    s = json.loads((run_dir / "best" / "summary.json").read_text())   # the default output
    assert s["checkpoint"] == str(run_dir / "best") and s["n_slices"] == 10
    assert s["split"] == str(split)                                     # the run's settings
    assert not (run_dir / "summary.json").exists() and not (run_dir / "last" / "summary.json").exists()


@pytest.mark.parametrize("amp", [["--amp", "bf16"], ["--amp"], ["--amp", "off"], []])
def test_amp_option(dataset, ckpt, capsys, amp):
    data, split = dataset
    code, _, err = run(capsys, "--checkpoint", ckpt, "--data", data, "--split", split,
                       "--device", "cpu", *amp)
    assert code == 0
    assert ("--amp without a value is deprecated" in err) == (amp == ["--amp"])
    s = json.loads((ckpt / "summary.json").read_text())
    assert s["amp"] is (amp[:1] == ["--amp"] and amp[1:] != ["off"])


def test_resolve_run_dir(dataset, tmp_path):
    from mambaseg.inference.loading import checkpoint_list, resolve_run_dir

    data, split = dataset
    run_dir = _run_dir(tmp_path, data, split, checkpoint="last")    # the run evaluates last/
    assert resolve_run_dir(run_dir) == run_dir / "last"
    assert checkpoint_list(str(run_dir)) == [run_dir / "last"]
    for other in (run_dir / "best", tmp_path / "nope", tmp_path):      # left as they are
        assert resolve_run_dir(other) == other
    with pytest.raises(Exception, match="given twice"):
        checkpoint_list([run_dir, run_dir / "last"])


# ----------------------------------------------------------------------------- user errors

def test_data_missing_or_empty(ckpt, capsys, tmp_path):
    before = _listing(ckpt)
    code, _, err = run(capsys, "--checkpoint", ckpt, "--data", tmp_path / "nope", "--device", "cpu")
    assert code == 2 and "does not exist" in err
    (tmp_path / "empty").mkdir()
    code, _, err = run(capsys, "--checkpoint", ckpt, "--data", tmp_path / "empty", "--device", "cpu")
    assert code == 2 and "no images" in err
    assert _listing(ckpt) == before


def test_bad_checkpoints(dataset, ckpt, capsys, tmp_path):
    data, split = dataset
    other = tmp_path / "other"
    shutil.copytree(ckpt, other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["model_name"] = "resnet18"
    (other / "config.json").write_text(json.dumps(cfg))
    code, _, err = run(capsys, "--checkpoint", other, "--data", data, "--split", split,
                       "--device", "cpu")
    assert code == 2 and str(other) in err
    data_bytes = (ckpt / "model.safetensors").read_bytes()
    (ckpt / "model.safetensors").write_bytes(data_bytes[:100])
    code, _, err = run(capsys, "--checkpoint", ckpt, "--data", data, "--split", split,
                       "--device", "cpu")
    assert code == 2 and str(ckpt) in err
    assert not (ckpt / "summary.json").exists() and not (other / "summary.json").exists()


def test_output_not_writable(dataset, ckpt, capsys, tmp_path):
    data, split = dataset
    (tmp_path / "file").write_text("x")
    code, _, err = run(capsys, "--checkpoint", ckpt, "--data", data, "--split", split,
                       "--out", tmp_path / "file" / "summary.json", "--device", "cpu")
    assert code == 2 and "is a file" in err


def test_unknown_model_and_missing_split_part(dataset, capsys, tmp_path):
    data, split = dataset
    code, _, err = run(capsys, "--model", "nosuch", "--data", data, "--out", tmp_path / "s.json")
    assert code == 2 and "unknown model 'nosuch'" in err and "ulvm_unet_v5" in err
    code, _, err = run(capsys, "--model", "unet", "--data", data)
    assert code == 2 and "--out" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_asked_for_without_cuda(dataset, ckpt, capsys):
    data, split = dataset
    with pytest.raises(SystemExit) as exc:                # refused while parsing the options
        run(capsys, "--checkpoint", ckpt, "--data", data, "--split", split, "--device", "cuda")
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "CUDA is not available" in err
    assert not (ckpt / "summary.json").exists()


# ----------------------------------------------------------------------------- ensembles

def test_two_checkpoints_average_their_probabilities(dataset, ckpt, capsys, tmp_path):
    from mambaseg.data.dataset import load_arrays
    from mambaseg.data.splits import resolve_split
    from mambaseg.inference.loading import load_checkpoint
    from mambaseg.inference.runner import predict_probs
    from mambaseg.models import create_model

    data, split = dataset
    torch.manual_seed(1)
    other = create_model("unet", features=(4, 8)).save_pretrained(tmp_path / "other")
    images, _ = load_arrays(resolve_split(data, str(split))["test"], progress=False)
    probs = [predict_probs(load_checkpoint(c), images)[:, 0] for c in (ckpt, other)]
    mean = (probs[0] + probs[1]) / 2
    t = round(float(mean.median()), 4)                           # about half the pixels above
    code, out, _ = run(capsys, "--checkpoint", ckpt, other, "--data", data, "--split", split,
                       "--device", "cpu", "--save-predictions", "--threshold", t)
    assert code == 0 and "ensemble of 2" in out
    s = json.loads((ckpt / "summary.json").read_text())         # beside the first checkpoint
    assert s["checkpoints"] == [str(ckpt), str(other)] and s["ensemble_members"] == 2
    assert not (other / "summary.json").exists()
    pred = load_predictions(ckpt / "predictions.npz")["masks"] > 0
    sure = ((mean - t).abs() > 1e-6).numpy()                     # away from the threshold
    assert sure.mean() > 0.8 and 0.2 < pred.mean() < 0.8
    assert np.array_equal(pred[sure], (mean > t).numpy()[sure])
    for p in probs:                                              # not one member's masks
        assert not np.array_equal(pred, (p > t).numpy())
    # one checkpoint: as before
    code, _, _ = run(capsys, "--checkpoint", other, "--data", data, "--split", split,
                     "--device", "cpu")
    s = json.loads((other / "summary.json").read_text())
    assert code == 0 and s["checkpoint"] == str(other) and "ensemble_members" not in s


def test_checkpoints_of_different_channels_are_refused(dataset, ckpt, capsys, tmp_path):
    from mambaseg.models import create_model

    data, split = dataset
    gray = create_model("unet", features=(4, 8), in_channels=1).save_pretrained(tmp_path / "gray")
    code, _, err = run(capsys, "--checkpoint", ckpt, gray, "--data", data, "--split", split,
                       "--device", "cpu")
    assert code == 2 and str(ckpt) in err and str(gray) in err and "channels" in err
    assert not (ckpt / "summary.json").exists()


# ----------------------------------------------------------------------------- post-processing

class Oracle(torch.nn.Module):
    """Predicts tumour exactly where channel 0 of the image is bright."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))

    def forward(self, x):
        return (x[:, :1] - 0.5) * 40 * self.w


@pytest.fixture
def blobs(tmp_path, monkeypatch) -> tuple[Path, Path]:
    """One patient: an 8x8 tumour on slices 1-3 predicted exactly and a false 2x2 blob alone
    on slice 4 (tumour-free); the checkpoint loader is replaced by the oracle."""
    root = tmp_path / "blobs" / "kaggle_3m" / "TCGA_AA_0001"
    root.mkdir(parents=True)
    rels = []
    for i in range(1, 5):
        image, mask = np.zeros((S, S, 3), np.uint8), np.zeros((S, S), np.uint8)
        if i < 4:
            image[4:12, 4:12, 0] = 255
            mask[4:12, 4:12] = 255
        else:
            image[24:26, 24:26, 0] = 255
        tifffile.imwrite(root / f"TCGA_AA_0001_{i}.tif", image)
        tifffile.imwrite(root / f"TCGA_AA_0001_{i}_mask.tif", mask)
        rels.append(f"TCGA_AA_0001/TCGA_AA_0001_{i}.tif")
    split = tmp_path / "blobs" / "split.json"
    split.write_text(json.dumps({"train": [], "val": [], "test": rels}))
    monkeypatch.setattr("mambaseg.inference.loading.load_models", lambda paths, dev: Oracle())
    return tmp_path / "blobs", split


def test_lcc_option_and_the_raw_numbers(blobs, capsys, tmp_path):
    data, split = blobs
    out = tmp_path / "s.json"
    code, text, _ = run(capsys, "--checkpoint", tmp_path / "ck", "--data", data, "--split",
                        split, "--out", out, "--lcc")
    assert code == 0
    assert "post-processing: 3-D largest component (from the options)" in text
    assert "without post-processing: dice_patient 0.9897" in text
    s = json.loads(out.read_text())
    # raw: tp 192, fp 4 -> Dice 384/388; the blob removed -> 1
    assert s["without_postprocess"]["dice_patient"]["mean"] == pytest.approx(384 / 388)
    assert s["dice_patient"]["mean"] - s["without_postprocess"]["dice_patient"]["mean"] \
        == pytest.approx(4 / 388)
    assert s["fpr_empty"]["mean"] == 0.0 and s["without_postprocess"]["fpr_empty"]["mean"] == 1.0
    code, text, _ = run(capsys, "--checkpoint", tmp_path / "ck", "--data", data, "--split",
                        split, "--out", out, "--overwrite")
    s = json.loads(out.read_text())
    assert code == 0 and "post-processing: none" in text and "without_postprocess" not in s
    assert s["dice_patient"]["mean"] == pytest.approx(384 / 388)
    code, _, _ = run(capsys, "--checkpoint", tmp_path / "ck", "--data", data, "--split",
                     split, "--out", out, "--overwrite", "--min-area", "5")
    assert code == 0 and json.loads(out.read_text())["dice_patient"]["mean"] == 1.0


def test_recommended_postprocess_is_the_default(dataset, capsys, tmp_path):
    from mambaseg.models import create_model

    data, split = dataset
    ck = create_model("unet", features=(4, 8)).save_pretrained(
        tmp_path / "ck", metadata={"postprocess": {"lcc": True, "min_area": 3}})
    code, text, _ = run(capsys, "--checkpoint", ck, "--data", data, "--split", split,
                        "--device", "cpu")
    s = json.loads((ck / "summary.json").read_text())
    assert code == 0 and "recommended by the checkpoint" in text
    assert s["postprocess"] == {"lcc": True, "min_volume": 0, "min_area": 3}
    code, text, _ = run(capsys, "--checkpoint", ck, "--data", data, "--split", split,
                        "--device", "cpu", "--overwrite", "--no-postprocess")
    s = json.loads((ck / "summary.json").read_text())
    assert code == 0 and s["postprocess"]["lcc"] is False and "post-processing: none" in text


@pytest.mark.parametrize("args, message", [
    (["--min-area", "-3"], "--min-area must be 0 or more, got -3"),
    (["--lcc", "--min-volume", "-1"], "--min-volume must be 0 or more, got -1"),
    (["--min-volume", "10"], "add --lcc"),
    (["--lcc", "--no-postprocess"], "--no-postprocess cannot be combined"),
])
def test_bad_postprocess_options(dataset, ckpt, capsys, args, message):
    data, split = dataset
    code, _, err = run(capsys, "--checkpoint", ckpt, "--data", data, "--split", split,
                       "--device", "cpu", *args)
    assert code == 2 and message in err
    assert not (ckpt / "summary.json").exists()
