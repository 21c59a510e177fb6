"""data.nifti and data.convert: cases, checks, orientation, normalisation, headers, conversion."""
from __future__ import annotations

import gzip
import itertools
import os
import sys
from pathlib import Path

import numpy as np
import pytest

nib = pytest.importorskip("nibabel")

from mambaseg.data import nifti as N  # noqa: E402
from mambaseg.errors import DataError, MambasegError  # noqa: E402

SAMPLE = Path(__file__).resolve().parents[2] / "examples" / "lgg-sample"
from nibabel.testing import data_path as _nib_data  # noqa: E402

NIB_DATA = Path(_nib_data)


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    from mambaseg.data.convert import convert_to_nifti

    out = tmp_path_factory.mktemp("nifti")
    convert_to_nifti(SAMPLE, out)
    return out


def _save(path: Path, data, affine=None, **codes) -> Path:
    img = nib.Nifti1Image(np.asarray(data), np.eye(4) if affine is None else affine)
    for key, code in codes.items():
        getattr(img, f"set_{key}")(img.affine, code=code)
    nib.save(img, str(path))
    return path


# ----------------------------------------------------------------------------- conversion

def test_convert_writes_each_patient_with_the_slices_voxels(converted):
    from mambaseg.data.io import read_image, read_mask
    from mambaseg.data.layout import find_slices

    names = sorted(p.name for p in converted.iterdir())
    assert len(names) == 12 and "TCGA_CS_6290_20000917_0001.nii.gz" in names
    slices = [s for s in find_slices(SAMPLE) if s.patient == "TCGA_CS_6290_20000917"]
    case = N.find_cases(converted / "TCGA_CS_6290_20000917_0000.nii.gz")[0][0]
    assert case.truth.name == "TCGA_CS_6290_20000917_seg.nii.gz" and len(case.files) == 3
    vol = N.load_case(case)
    assert vol.data.shape == (256, 256, 20, 3) and vol.plain == [True] * 3
    ref = vol.reference
    assert nib.aff2axcodes(ref.affine) == N.SLICE_AXES and ref.header.get_zooms() == (1, 1, 1)
    assert int(ref.header["qform_code"]) == 2 and b"placeholder" in ref.header["descrip"].item()
    stack = N.axial_slices(vol.data, ref.affine)
    for k in (0, 7, 19):                                  # the volume's slices are the tifs
        assert np.array_equal(stack[k].astype(np.uint8), read_image(slices[k].image))
    seg = N.voxels(N.read_volume(case.truth), "seg")[0]
    assert set(np.unique(seg)) == {0, 1}
    assert np.array_equal(N.axial_slices(seg, ref.affine)[7], read_mask(slices[7].mask))


def test_convert_refuses_existing_outputs_and_bad_spacing(converted, tmp_path):
    from mambaseg.data.convert import convert_to_nifti

    with pytest.raises(MambasegError, match="already exists.*--overwrite"):
        convert_to_nifti(SAMPLE, converted)
    with pytest.raises(MambasegError, match="three positive"):
        convert_to_nifti(SAMPLE, tmp_path / "x", spacing=(1, 0, 1))
    assert not (tmp_path / "x").exists()


# ----------------------------------------------------------------------------- cases

def test_find_cases_groups_channel_files_and_skips_outputs(tmp_path):
    vol = np.zeros((4, 4, 3), np.uint8)
    for name in ("a_0000", "a_0001", "a_0002", "a_seg", "b", "b_mask", "sub/c_0000"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        _save(tmp_path / f"{name}.nii.gz", vol)
    cases, warnings = N.find_cases(tmp_path)
    assert [(c.name, len(c.files), c.truth is not None) for c in cases] == \
        [("a", 3, True), ("b", 1, False), ("sub/c", 1, False)]
    one = N.find_cases(tmp_path / "a_0002.nii.gz")[0]      # one channel file: its whole case
    assert [f.name for f in one[0].files] == ["a_0000.nii.gz", "a_0001.nii.gz", "a_0002.nii.gz"]
    assert N.holds_volumes(tmp_path) and not N.holds_volumes(SAMPLE)
    (tmp_path / "a_0001.nii.gz").unlink()
    with pytest.raises(DataError, match="numbered 0000, 0002"):
        N.load_case(N.find_cases(tmp_path / "a_0000.nii.gz")[0][0])
    with pytest.raises(DataError, match="no NIfTI volumes"):
        N.find_cases(SAMPLE)


def test_missing_nibabel_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "nibabel", None)
    with pytest.raises(MambasegError, match=r"pip install 'mambaseg\[nifti\]'"):
        N.nibabel()


# ----------------------------------------------------------------------------- bad input

def test_bad_volumes_each_name_their_file(tmp_path):
    flat = _save(tmp_path / "flat.nii.gz", np.zeros((8, 8), np.float32))
    with pytest.raises(DataError, match=f"{flat}: a 2-D image"):
        N.load_case(N.find_cases(flat)[0][0])
    noise = np.random.default_rng(0).random((16, 16, 8)).astype(np.float32)
    good = _save(tmp_path / "good.nii.gz", noise).read_bytes()
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(good[: len(good) // 2])                       # truncated download
    with pytest.raises(DataError, match=f"{cut}: unreadable"):
        N.load_case(N.find_cases(cut)[0][0])
    junk = tmp_path / "junk.nii.gz"
    junk.write_bytes(gzip.compress(b"not a nifti header" * 30))
    with pytest.raises(DataError, match=f"{junk}: unreadable"):
        N.load_case(N.find_cases(junk)[0][0])
    nan = np.ones((4, 4, 4), np.float32)
    nan[1, 2, 3] = np.nan
    nan_path = _save(tmp_path / "nan.nii.gz", nan)
    with pytest.raises(DataError, match=f"{nan_path}: non-finite voxels.*1 of 64.*--nan-policy"):
        N.load_case(N.find_cases(nan_path)[0][0])
    vol = N.load_case(N.find_cases(nan_path)[0][0], nan_policy="zero")
    assert vol.data[1, 2, 3, 0] == 0 and "replaced by 0" in vol.notes[0]


def test_channel_files_must_share_shape_and_affine(tmp_path):
    _save(tmp_path / "c_0000.nii.gz", np.zeros((8, 8, 4)))
    _save(tmp_path / "c_0001.nii.gz", np.zeros((8, 8, 5)))
    with pytest.raises(DataError, match=r"c_0001.nii.gz: shape \(8, 8, 5\) differs .*c_0000"):
        N.load_case(N.find_cases(tmp_path)[0][0])
    _save(tmp_path / "c_0001.nii.gz", np.zeros((8, 8, 4)), np.diag([2.0, 1, 1, 1]))
    with pytest.raises(DataError, match="c_0001.nii.gz: its affine differs"):
        N.load_case(N.find_cases(tmp_path)[0][0])


# ----------------------------------------------------------------------------- geometry

def _reoriented(data, affine, transform):
    """The same voxels stored with another axis order / flips, with the matching affine."""
    from nibabel.orientations import apply_orientation, inv_ornt_aff

    return apply_orientation(data, transform), affine @ inv_ornt_aff(transform, data.shape)


def test_axial_slices_do_not_depend_on_how_the_volume_is_stored():
    rng = np.random.default_rng(0)
    data = rng.random((6, 5, 4)).astype(np.float32)
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])                          # LPS: the slice layout
    base = N.axial_slices(data, affine)
    assert np.array_equal(base, data.transpose(2, 1, 0))
    for perm in itertools.permutations(range(3)):
        for flips in itertools.product((1, -1), repeat=3):
            t = np.array([[p, f] for p, f in zip(perm, flips)], float)
            d2, a2 = _reoriented(data, affine, t)
            assert np.array_equal(N.axial_slices(d2, a2), base), (perm, flips)
            assert np.array_equal(N.from_axial(base, a2), d2)
            axis = N.axial_axis(a2)
            assert d2.shape[axis] == 4 and nib.aff2axcodes(a2)[axis] in "SI"
            for k, i in enumerate(N.axial_order(a2, 4)):      # slice k is stored slice i
                assert np.array_equal(np.sort(np.take(d2, i, axis=axis).ravel()),
                                      np.sort(base[k].ravel()))


def test_normalise_plain_uint8_as_is_else_robust_range():
    u8 = np.arange(0, 250, 10, dtype=np.float32).reshape(5, 5, 1)
    out, info = N.normalise(u8, plain=True)
    assert np.array_equal(out, u8.astype(np.uint8)) and info["method"] == "uint8 as stored"
    vol = np.zeros((20, 20, 20), np.float32)
    vol[5:15, 5:15, 5:15] = np.linspace(100, 1100, 1000).reshape(10, 10, 10)
    vol[0, 0, 0] = 1e6                                                  # one hot voxel
    out, info = N.normalise(vol, plain=False)
    assert info["low"] == 0 and 1090 < info["high"] < 1100
    assert out[0, 0, 0] == 255 and out[5, 5, 5] < 30 and out.max() == 255
    assert N.normalise(np.full((4, 4, 4), 7.0), plain=False)[0].max() == 0


def test_voxel_size_from_the_affine_and_the_unit():
    img = nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), np.diag([0.5, -0.8, 3.0, 1.0]))
    img.header.set_xyzt_units("micron")
    sizes, notes = N.voxel_size_mm(img)
    assert np.allclose(sizes, (0.0005, 0.0008, 0.003)) and not notes
    img.header.set_xyzt_units("unknown")
    assert "taken as mm" in N.voxel_size_mm(img)[1][0]


# ----------------------------------------------------------------------------- nibabel's files

@pytest.mark.parametrize("name", ["anatomical.nii", "standard.nii.gz", "example_nifti2.nii.gz",
                                  "example4d.nii.gz", "reoriented_anat_moved.nii"])
def test_odd_headers_of_nibabel_examples_survive_a_round_trip(name, tmp_path):
    path = NIB_DATA / name
    vol = N.load_case(N.find_cases(path)[0][0])
    ref = vol.reference
    assert vol.data.shape[:3] == ref.shape[:3]
    mask = (vol.data[..., 0] > np.median(vol.data[..., 0])).astype(np.uint8)
    out = N.write_volume(tmp_path / "m.nii.gz", N.like(ref, mask))
    back = nib.load(str(out))
    assert type(back) is type(ref) and back.shape == ref.shape[:3]
    assert back.get_data_dtype() == np.uint8
    assert np.array_equal(np.asanyarray(back.dataobj), mask)
    assert np.allclose(back.affine, ref.affine)
    for key in ("qform_code", "sform_code"):
        assert int(back.header[key]) == int(ref.header[key]), key
    assert np.allclose(back.get_qform(), ref.get_qform()) and \
        np.allclose(back.get_sform(), ref.get_sform())
    assert back.header.get_xyzt_units()[0] == ref.header.get_xyzt_units()[0]
    s = N.axial_slices(vol.data[..., 0], ref.affine)
    assert np.array_equal(N.from_axial(s, ref.affine), vol.data[..., 0])


def test_write_volume_is_atomic(tmp_path, monkeypatch):
    target = tmp_path / "m.nii.gz"
    img = nib.Nifti1Image(np.zeros((2, 2, 2), np.uint8), np.eye(4))

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        N.write_volume(target, img)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    N.write_volume(target, img)
    assert nib.load(str(target)).shape == (2, 2, 2)
