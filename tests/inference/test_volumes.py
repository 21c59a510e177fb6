"""inference.volumes: NIfTI volumes segmented as slices are, measured, and written on their grid."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

nib = pytest.importorskip("nibabel")

import mambaseg  # noqa: E402
from mambaseg.data import nifti as N  # noqa: E402
from mambaseg.inference.postprocess import PostProcess  # noqa: E402
from mambaseg.inference.predict import run_predict  # noqa: E402
from mambaseg.errors import DataError  # noqa: E402
from toy_data import Bright  # noqa: E402

SAMPLE = Path(__file__).resolve().parents[2] / "examples" / "lgg-sample"


class Edges(torch.nn.Module):
    """Tumour where channel 0 rises from one row to the next and from one column to the next:
    the mask depends on the in-plane orientation (a model that sees the image as it is)."""

    in_channels = 3

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))

    def forward(self, x):
        x0 = x[:, :1]
        rise = (x0 - x0.roll(1, dims=2)) + 0.5 * (x0 - x0.roll(1, dims=3))
        return (rise - 0.05) * 100 * self.w


class FlairOnly(Bright):
    """Bright on a one-channel model that records its channel as FLAIR (as a checkpoint of
    'train --channels flair' does)."""

    in_channels = 1
    checkpoint_config = {"metadata": {"training": {"channels": ["FLAIR"]}}}


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    from mambaseg.data.convert import convert_to_nifti

    out = tmp_path_factory.mktemp("nifti")
    convert_to_nifti(SAMPLE, out)
    return out


def _phantom(spacing=(0.5, 0.8, 3.0), shape=(40, 30, 10)) -> nib.Nifti1Image:
    """Two bright boxes (6x5x3 and 2x2x2 voxels) in a dark float volume, three equal channels."""
    vol = np.zeros(shape, np.float32)
    vol[4:10, 3:8, 2:5] = 900.0
    vol[30:32, 20:22, 7:9] = 1000.0
    img = nib.Nifti1Image(np.repeat(vol[..., None], 3, axis=3), np.diag([*spacing, 1.0]))
    img.header.set_xyzt_units("mm")
    return img


# ----------------------------------------------------------------------------- round trip

def test_volumes_give_the_masks_of_slice_prediction(converted, tmp_path):
    """The sample's patients as NIfTI give, slice for slice, the masks predict gives for the
    tifs (Dice 1.0), post-processing included."""
    from mambaseg.data.io import read_mask

    for model, pp in ((Bright(), None), (Edges(), PostProcess(lcc=True))):
        slices = run_predict(SAMPLE, tmp_path / "s", model=model, device="cpu", postprocess=pp,
                             overwrite=True)
        vols = run_predict(converted, tmp_path / "v", model=model, device="cpu", postprocess=pp,
                           overwrite=True, overlay=pp is None)
        assert vols.summary["kind"] == "volumes" and vols.summary["counts"]["written"] == 3
        for rec in vols.written:
            mask = nib.load(str(tmp_path / "v" / rec["mask"]))
            stack = N.axial_slices(np.asanyarray(mask.dataobj), mask.affine)
            mine = [r for r in slices.written if r["input"].startswith(f"kaggle_3m/{rec['case']}/")]
            mine.sort(key=lambda r: int(r["input"].rsplit("_", 1)[1].split(".")[0]))
            assert len(mine) == len(stack)
            for k, r in enumerate(mine):
                assert np.array_equal(stack[k], read_mask(tmp_path / "s" / r["mask"])), (rec, k)
            assert rec["tumour_voxels"] == sum(r["tumour_pixels"] for r in mine)
            assert "dice" in rec and (pp is not None or (tmp_path / "v" / rec["overlay"]).is_file())


# ----------------------------------------------------------------------------- outputs

def test_mask_keeps_the_grid_and_header(tmp_path):
    img = _phantom()
    img.set_qform(img.affine, code=1)
    img.set_sform(np.diag([0.5, 0.8, 3.0, 1.0]) @ np.eye(4), code=4)
    (tmp_path / "in").mkdir()
    nib.save(img, str(tmp_path / "in" / "p.nii.gz"))
    res = run_predict(tmp_path / "in", tmp_path / "out", model=Bright(), device="cpu",
                      probabilities=True)
    out = nib.load(str(tmp_path / "out" / "p_mask.nii.gz"))
    assert out.shape == (40, 30, 10) and out.get_data_dtype() == np.uint8
    assert np.array_equal(out.affine, img.affine)
    assert (int(out.header["qform_code"]), int(out.header["sform_code"])) == (1, 4)
    assert np.array_equal(out.header.get_zooms(), img.header.get_zooms()[:3])
    assert set(np.unique(np.asanyarray(out.dataobj))) == {0, 1}
    prob = nib.load(str(tmp_path / "out" / "p_prob.nii.gz"))
    assert prob.get_data_dtype() == np.float32 and prob.shape == out.shape
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == \
        ["p_mask.nii.gz", "p_prob.nii.gz", "summary.json"]
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert s["cases"][0]["mask"] == "p_mask.nii.gz" and res.exit_status == 0


def test_tumour_volume_components_and_slices_on_an_anisotropic_phantom(tmp_path):
    mask, rec = mambaseg.segment_volume(_phantom(), model=Bright(), device="cpu",
                                        postprocess=None)
    assert rec["tumour_voxels"] == 6 * 5 * 3 + 2 * 2 * 2
    assert rec["tumour_volume_ml"] == pytest.approx(98 * 0.5 * 0.8 * 3.0 / 1000)
    assert rec["components"] == 2 and rec["slices_with_tumour"] == [2, 3, 4, 7, 8]
    assert rec["voxel_size_mm"] == [0.5, 0.8, 3.0] and rec["orientation"] == "RAS"
    assert rec["axial_axis"] == 2 and "not square" in " ".join(rec["notes"])
    assert mask.shape == (40, 30, 10)
    # the largest component only: the 2x2x2 box goes
    _, rec = mambaseg.segment_volume(_phantom(), model=Bright(), device="cpu",
                                     postprocess=PostProcess(lcc=True))
    assert rec["components"] == 1 and rec["removed_voxels"] == 8


def test_the_same_case_stored_otherwise_gives_the_same_mask(converted):
    from nibabel.orientations import apply_orientation, inv_ornt_aff

    path = converted / "TCGA_HT_8106_19970727_0000.nii.gz"
    base, rec = mambaseg.segment_volume(path, model=Edges(), device="cpu")
    ref = np.asanyarray(base.dataobj)
    assert rec["tumour_voxels"] > 0
    imgs = [nib.load(str(f)) for f in sorted(converted.glob("TCGA_HT_8106_19970727_000*"))]
    for t in ([[1, 1], [0, 1], [2, 1]], [[0, -1], [1, 1], [2, -1]], [[2, 1], [0, -1], [1, 1]]):
        t = np.array(t, float)
        moved = [nib.Nifti1Image(apply_orientation(np.asanyarray(i.dataobj), t),
                                 i.affine @ inv_ornt_aff(t, i.shape)) for i in imgs]
        mask, rec2 = mambaseg.segment_volume(moved, model=Edges(), device="cpu")
        inverse = np.zeros_like(t)                          # axis p_i goes back to axis i
        for i, (p, f) in enumerate(t):
            inverse[int(p)] = (i, f)
        back = apply_orientation(np.asanyarray(mask.dataobj), inverse)
        assert np.array_equal(back, ref), t
        assert rec2["tumour_voxels"] == rec["tumour_voxels"]
        assert rec2["tumour_volume_ml"] == rec["tumour_volume_ml"]
    # the model does see orientation: the flipped slices, not reoriented, give another mask
    stack = N.axial_slices(N.load_case(N.find_cases(path)[0][0]).data, base.affine)
    flipped = run_slices(stack[:, ::-1])
    assert not np.array_equal(flipped[:, ::-1], N.axial_slices(ref, base.affine))


def run_slices(stack):
    from mambaseg.inference.runner import image_probs

    return np.stack(image_probs(Edges(), list(np.ascontiguousarray(stack).astype(np.uint8)), 8,
                                "cpu", False, True)) > 0.5


# ----------------------------------------------------------------------------- channels

def test_flair_only_model_takes_the_flair_channel(converted, tmp_path):
    case = "TCGA_CS_6290_20000917"
    three = sorted(converted.glob(f"{case}_000*"))
    m3, r3 = mambaseg.segment_volume(three[0], model=FlairOnly(), device="cpu")
    alone = nib.load(str(three[1]))                          # the FLAIR volume alone
    m1, r1 = mambaseg.segment_volume(alone, model=FlairOnly(), device="cpu")
    assert "FLAIR (channel 1 of 3) taken" in " ".join(r3["notes"]) and r1["inputs"] == []
    assert np.array_equal(np.asanyarray(m3.dataobj), np.asanyarray(m1.dataobj))
    flair = np.asanyarray(nib.load(str(three[1])).dataobj)
    assert np.array_equal(np.asanyarray(m1.dataobj), (flair > 127).astype(np.uint8))
    assert r1["channels"] == ["FLAIR"]
    with pytest.raises(DataError, match=r"0001.nii.gz: one channel .* takes 3 channel"):
        mambaseg.segment_volume(alone, model=Bright(), device="cpu")


def test_shipped_model_is_picked_by_channel_count(converted, tmp_path, monkeypatch):
    from mambaseg.inference.loading import save_ensemble
    from mambaseg.models import create_model, pretrained

    torch.manual_seed(0)
    weights = tmp_path / "weights"
    save_ensemble(weights / "rgb", [create_model("unet", features=(4, 8))],
                  metadata={"default": True})
    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", weights)
    flair = nib.load(str(converted / "TCGA_CS_6290_20000917_0001.nii.gz"))
    with pytest.raises(DataError, match="no FLAIR-only model is shipped .*--channels flair"):
        mambaseg.segment_volume(flair, device="cpu")
    create_model("unet", in_channels=1, features=(4, 8)).save_pretrained(
        weights / "flair", metadata={"channels": ["FLAIR"]})
    _, rec = mambaseg.segment_volume(flair, device="cpu")
    assert rec["checkpoint"] == "shipped:flair" and rec["channels"] == ["FLAIR"]
    _, rec = mambaseg.segment_volume(converted / "TCGA_CS_6290_20000917_0000.nii.gz",
                                     device="cpu")
    assert rec["checkpoint"] == "shipped:rgb" and len(rec["channels"]) == 3


def test_a_channel_count_no_model_takes_is_refused_before_any_model_loads(tmp_path):
    two = nib.Nifti1Image(np.zeros((8, 8, 4, 2), np.float32), np.eye(4))
    two.to_filename(str(tmp_path / "two.nii.gz"))
    with pytest.raises(DataError, match=r"two.nii.gz: 2 channels .*no model takes 2"):
        mambaseg.segment_volume(tmp_path / "two.nii.gz", device="cpu")


# ----------------------------------------------------------------------------- oblique affines

def _rotated(degrees: float, spacing=(0.5, 0.8, 3.0)) -> np.ndarray:
    """``diag(spacing)`` rotated by ``degrees`` about the left-right (x) axis."""
    t = np.radians(degrees)
    rot = np.array([[1, 0, 0], [0, np.cos(t), -np.sin(t)], [0, np.sin(t), np.cos(t)]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag(spacing)
    return affine


def test_an_oblique_volume_is_segmented_on_its_grid_with_a_warning(tmp_path):
    img = _phantom()
    img.set_sform(_rotated(30.0), code=1)
    img.set_qform(_rotated(30.0), code=1)
    (tmp_path / "in").mkdir()
    nib.save(img, str(tmp_path / "in" / "tilted.nii.gz"))
    res = run_predict(tmp_path / "in", tmp_path / "out", model=Bright(), device="cpu")
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    rec = s["cases"][0]
    assert rec["obliquity_degrees"] == 30.0 and rec["axial_axis"] == 2
    warned = [w for w in s["warnings"] if "oblique" in w]
    assert warned == res.warnings and len(warned) == 1
    assert warned[0].startswith(f"{tmp_path / 'in' / 'tilted.nii.gz'}: oblique volume: its "
                                "slice axis is 30.0 degrees from the superior-inferior")
    out = nib.load(str(tmp_path / "out" / "tilted_mask.nii.gz"))
    assert out.shape == img.shape[:3] and np.allclose(out.affine, img.affine)
    # the same voxels as the plain volume: slices are taken as stored, not resampled
    plain, rec0 = mambaseg.segment_volume(_phantom(), model=Bright(), device="cpu")
    assert rec0["obliquity_degrees"] == 0.0
    assert np.array_equal(np.asanyarray(out.dataobj), np.asanyarray(plain.dataobj))
    with pytest.warns(UserWarning, match=r"oblique volume: .* 30\.0 degrees"):
        mambaseg.segment_volume(img, model=Bright(), device="cpu")


def test_obliquity_below_the_threshold_is_recorded_without_a_warning(recwarn):
    assert N.obliquity(np.diag([-1.0, -1.0, 1.0, 1.0])) == 0.0
    assert N.obliquity(_rotated(5.0)) == pytest.approx(5.0)
    assert N.obliquity(_rotated(30.0)[:, [2, 0, 1, 3]]) == pytest.approx(30.0)   # axes permuted
    assert N.oblique_warning("v", 10.0) is None and "v: oblique" in N.oblique_warning("v", 10.1)
    img = _phantom()
    img.set_sform(_rotated(5.0), code=1)
    _, rec = mambaseg.segment_volume(img, model=Bright(), device="cpu")
    assert rec["obliquity_degrees"] == 5.0
    assert not [w for w in recwarn if "oblique" in str(w.message)]
