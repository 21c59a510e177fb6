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
from mambaseg.engine.evaluate import METRIC_KEYS, load_predictions

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
    code, _, err = run(capsys, "--checkpoint", ckpt, "--data", data, "--split", split,
                       "--device", "cuda")
    assert code == 2 and "CUDA is not available" in err
    assert not (ckpt / "summary.json").exists()
