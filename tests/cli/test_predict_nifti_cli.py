"""`mambaseg predict` on NIfTI volumes and `mambaseg data convert`: outputs, refusals, bad input
(each: exit status 2, one message naming the file, nothing written)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

nib = pytest.importorskip("nibabel")

from mambaseg.cli import main  # noqa: E402

SAMPLE = Path(__file__).resolve().parents[2] / "examples" / "lgg-sample"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """A tiny untrained 3-channel U-Net checkpoint."""
    from mambaseg.models import create_model

    torch.manual_seed(0)
    return create_model("unet", features=(4, 8)).save_pretrained(
        tmp_path_factory.mktemp("ckpt") / "unet")


@pytest.fixture(scope="module")
def flair_ckpt(tmp_path_factory) -> Path:
    """A tiny one-channel U-Net checkpoint recording its channel (FLAIR)."""
    from mambaseg.models import create_model

    torch.manual_seed(0)
    return create_model("unet", in_channels=1, features=(4, 8)).save_pretrained(
        tmp_path_factory.mktemp("ckpt") / "flair", metadata={"training": {"channels": ["FLAIR"]}})


def run(capsys, *args) -> tuple[int, str, str]:
    code = main([*map(str, args)])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def _volume(path: Path, shape=(32, 32, 4), dtype=np.float32, affine=None, fill=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.random.default_rng(0).random(shape).astype(dtype) * 100 if fill is None else fill
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))
    return path


def _case(folder: Path, name="c", channels=3, **kw) -> Path:
    for c in range(channels):
        _volume(folder / f"{name}_{c:04d}.nii.gz", **kw)
    return folder


# ----------------------------------------------------------------------------- outputs

def test_convert_then_predict_volumes_with_overlay(tmp_path, capsys, ckpt):
    code, out, _ = run(capsys, "data", "convert", SAMPLE, "--to", "nifti", "-o", tmp_path / "nii",
                       "--spacing", "0.9", "0.9", "5")
    assert code == 0 and "3 patient(s) written" in out and "0.9 x 0.9 x 5 mm" in out
    one = tmp_path / "one"
    one.mkdir()
    for f in (tmp_path / "nii").glob("TCGA_HT_7602_19951103_*"):
        shutil.copy(f, one / f.name)
    code, out, err = run(capsys, "predict", "-i", one, "-o", tmp_path / "out", "--checkpoint",
                         ckpt, "--device", "cpu", "--overlay")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "TCGA_HT_7602_19951103_mask.nii.gz", "TCGA_HT_7602_19951103_overlay.png", "summary.json"]
    assert "mL of tumour" in out and "Dice" in out and "1 of 1 volume(s)" in out
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    rec = s["cases"][0]
    assert rec["voxel_size_mm"] == pytest.approx([0.9, 0.9, 5.0])
    assert rec["tumour_volume_ml"] == pytest.approx(rec["tumour_voxels"] * 0.9 * 0.9 * 5 / 1000,
                                                    rel=1e-5)
    assert rec["truth"] == "TCGA_HT_7602_19951103_seg.nii.gz" and 0 <= rec["dice"] <= 1
    assert Image.open(tmp_path / "out" / rec["overlay"]).mode == "RGB"
    # an existing output is never overwritten without --overwrite
    before = (tmp_path / "out" / "summary.json").read_bytes()
    code, _, err = run(capsys, "predict", "-i", one, "-o", tmp_path / "out", "--checkpoint",
                       ckpt, "--device", "cpu")
    assert code == 2 and "--overwrite" in err
    assert (tmp_path / "out" / "summary.json").read_bytes() == before
    code, _, _ = run(capsys, "predict", "-i", one, "-o", tmp_path / "out", "--checkpoint",
                     ckpt, "--device", "cpu", "--overwrite")
    assert code == 0


def test_flair_checkpoint_takes_a_flair_volume_or_the_flair_of_three(tmp_path, capsys,
                                                                     flair_ckpt):
    _volume(tmp_path / "in" / "flair.nii.gz")
    _case(tmp_path / "in")
    code, out, err = run(capsys, "predict", "-i", tmp_path / "in", "-o", tmp_path / "out",
                         "--checkpoint", flair_ckpt, "--device", "cpu")
    assert code == 0, err
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [c["case"] for c in s["cases"]] == ["c", "flair"]
    assert all(c["channels"] == ["FLAIR"] for c in s["cases"])
    assert "FLAIR (channel 1 of 3) taken" in err


def test_an_oblique_volume_is_warned_about_naming_the_file_and_the_angle(tmp_path, capsys,
                                                                         ckpt):
    t = np.radians(23.4)                       # 23.4 degrees about the left-right axis
    affine = np.eye(4)
    affine[1:3, 1:3] = [[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]
    tilted = _volume(tmp_path / "in" / "tilted.nii.gz", shape=(32, 32, 4, 3), affine=affine)
    _volume(tmp_path / "in" / "plain.nii.gz", shape=(32, 32, 4, 3))
    code, _, err = run(capsys, "predict", "-i", tmp_path / "in", "-o", tmp_path / "out",
                       "--checkpoint", ckpt, "--device", "cpu")
    assert code == 0, err
    assert f"warning: {tilted}: oblique volume: its slice axis is 23.4 degrees" in err
    assert err.count("warning:") == 1
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert {c["case"]: c["obliquity_degrees"] for c in s["cases"]} == {"plain": 0.0,
                                                                       "tilted": 23.4}
    mask = nib.load(str(tmp_path / "out" / "tilted_mask.nii.gz"))
    assert mask.shape == (32, 32, 4) and np.allclose(mask.affine, affine)


def test_a_folder_skips_the_case_it_cannot_segment(tmp_path, capsys, ckpt):
    _case(tmp_path / "in", "good")
    _volume(tmp_path / "in" / "flat.nii.gz", fill=np.zeros((8, 8), np.float32))
    code, _, err = run(capsys, "predict", "-i", tmp_path / "in", "-o", tmp_path / "out",
                       "--checkpoint", ckpt, "--device", "cpu")
    assert code == 1 and "skipped flat: a 2-D image" in err
    assert (tmp_path / "out" / "good_mask.nii.gz").is_file()


# ----------------------------------------------------------------------------- bad input

def _bad_inputs(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """Each bad input: (the input to give, the file the message must name)."""
    out = {}
    flat = _volume(tmp_path / "flat" / "flat.nii.gz", fill=np.zeros((16, 16), np.float32))
    out["2-D"] = (flat, f"{flat}: a 2-D image")
    four = _volume(tmp_path / "four" / "t.nii.gz", shape=(16, 16, 4, 2))
    out["4-D"] = (four, f"{four}: 2 channels .* takes 3 channel")
    shapes = _case(tmp_path / "shapes")
    _volume(shapes / "c_0002.nii.gz", shape=(32, 32, 5))
    out["shapes"] = (shapes, "c_0002.nii.gz: shape")
    affines = _case(tmp_path / "affines")
    _volume(affines / "c_0001.nii.gz", affine=np.diag([1.0, 1.0, 2.0, 1.0]))
    out["affines"] = (affines, "c_0001.nii.gz: its affine differs")
    nan = np.ones((16, 16, 4), np.float32)
    nan[3, 3, 1] = np.inf
    nanf = _volume(tmp_path / "nan" / "n_0000.nii.gz", fill=nan)
    for c in (1, 2):
        _volume(tmp_path / "nan" / f"n_{c:04d}.nii.gz", shape=(16, 16, 4))
    out["nan"] = (tmp_path / "nan", f"{nanf}: non-finite voxels .*--nan-policy zero")
    good = _volume(tmp_path / "x.nii.gz", shape=(16, 16, 8)).read_bytes()
    corrupt = tmp_path / "corrupt" / "k.nii.gz"
    corrupt.parent.mkdir()
    corrupt.write_bytes(good[: len(good) // 2])
    out["corrupt"] = (corrupt, f"{corrupt}: unreadable")
    flair = _volume(tmp_path / "flair" / "f.nii.gz")
    out["flair"] = (flair, f"{flair}: one channel .*--channels flair")
    return out


def test_each_bad_input_is_one_error_naming_its_file_and_writes_nothing(tmp_path, capsys, ckpt):
    import re

    for what, (given, message) in _bad_inputs(tmp_path).items():
        outdir = tmp_path / "out" / what
        code, out, err = run(capsys, "predict", "-i", given, "-o", outdir, "--checkpoint", ckpt,
                             "--device", "cpu")
        assert code == 2, (what, out, err)
        assert re.search(message, err), (what, err)
        assert len(err.strip().splitlines()) == 1, (what, err)
        assert not outdir.exists(), what
    code, _, err = run(capsys, "predict", "-i", tmp_path / "nan", "-o", tmp_path / "zero",
                       "--checkpoint", ckpt, "--device", "cpu", "--nan-policy", "zero")
    assert code == 0 and "1 non-finite voxel(s) (NaN/Inf) replaced by 0" in err


def test_onnx_is_refused_for_volumes(tmp_path, capsys):
    vol = _volume(tmp_path / "v.nii.gz")
    code, _, err = run(capsys, "predict", "-i", vol, "-o", tmp_path / "out", "--onnx",
                       tmp_path / "m.onnx")
    assert code == 2 and "NIfTI volumes are segmented with PyTorch models" in err
