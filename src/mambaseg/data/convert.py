"""``mambaseg data convert PATH --to nifti``: the LGG slices of each patient as NIfTI volumes.

Each patient's slices (in slice order, slice 1 first) become ``<patient>_0000.nii.gz``,
``_0001`` and ``_0002`` (pre-contrast, FLAIR, post-contrast: nnU-Net's naming; uint8, the
slices' own 0-255 values) and ``<patient>_seg.nii.gz`` (uint8 0/1, when every slice has its
mask). The voxel axes are those of the slices (``data.nifti.SLICE_AXES``: columns towards the
patient's left, rows towards posterior, slices towards superior), so the affine is
``diag(-sx, -sy, sz)``: LPS.

The Kaggle tifs carry no spacing nor position: the volumes get the placeholder spacing
``PLACEHOLDER_SPACING`` (1 x 1 x 1 mm, ``--spacing`` to choose another), origin 0, qform and
sform code 2 (aligned), and the header's description says so. Volumes in mL computed on them
are therefore in units of that placeholder voxel, not the patient's true volume.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from mambaseg.data.io import read_image, read_mask
from mambaseg.data.layout import find_slices
from mambaseg.data.nifti import nibabel, write_volume
from mambaseg.errors import DataError, MambasegError

#: placeholder voxel size (mm) of converted volumes: the Kaggle tifs carry none
PLACEHOLDER_SPACING = (1.0, 1.0, 1.0)
DESCRIPTION = "mambaseg data convert: placeholder spacing"


def patient_volumes(slices) -> tuple[np.ndarray, np.ndarray | None]:
    """One patient's slices (in order) as ``(image (X, Y, Z, 3) uint8, mask (X, Y, Z) uint8 or
    None)`` in the slice layout (X: image columns, Y: rows, Z: slices)."""
    images = [read_image(s.image, 3) for s in slices]
    shape = images[0].shape
    for s, img in zip(slices, images):
        if img.shape != shape:
            raise DataError(f"{s.image}: {img.shape[1]}x{img.shape[0]} pixels, but "
                            f"{slices[0].image.name} has {shape[1]}x{shape[0]}; a patient's "
                            "slices must share one size")
    image = np.stack(images, axis=2).transpose(1, 0, 2, 3)
    if any(s.mask is None for s in slices):
        return image, None
    masks = [read_mask(s.mask) for s in slices]
    for s, m in zip(slices, masks):
        if m.shape != shape[:2]:
            raise DataError(f"{s.mask}: mask size {m.shape} differs from its image {shape[:2]}")
    return image, np.stack(masks, axis=2).transpose(1, 0, 2)


def _image(data: np.ndarray, spacing):
    nib = nibabel()
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=2)
    img.set_sform(affine, code=2)
    img.header.set_xyzt_units("mm")
    img.header["descrip"] = DESCRIPTION.encode()
    return img


def convert_to_nifti(root: str | Path, out: str | Path, spacing=PLACEHOLDER_SPACING,
                     overwrite: bool = False) -> list[dict]:
    """Write each patient of the dataset ``root`` as NIfTI volumes into ``out`` (see the
    module docstring); returns one ``{"patient", "slices", "files"}`` entry per patient.
    Every output path is checked before anything is written (MambasegError when one exists,
    unless ``overwrite``); each file is written atomically."""
    root, out = Path(root), Path(out)
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
        raise MambasegError(f"--spacing needs three positive sizes in mm, got {spacing}")
    patients: dict[str, list] = {}
    for s in find_slices(root):
        patients.setdefault(s.patient, []).append(s)
    names = {p: Path(p).name for p in patients}
    if len(set(names.values())) < len(names):
        raise DataError(f"{root}: two patient folders share one name; convert them separately")
    targets = {p: [out / f"{names[p]}_{c:04d}.nii.gz" for c in range(3)]
               + [out / f"{names[p]}_seg.nii.gz"] for p in patients}
    existing = [t for ts in targets.values() for t in ts if t.exists()]
    if existing and not overwrite:
        raise MambasegError(f"{existing[0]} already exists ({len(existing)} output file(s) do); "
                            "pass --overwrite to replace them (nothing was written)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MambasegError(f"output folder {out} cannot be created: {exc.strerror or exc}") \
            from None
    done = []
    for patient, slices in patients.items():
        image, mask = patient_volumes(slices)
        files = []
        for c in range(3):
            files.append(write_volume(targets[patient][c],
                                      _image(np.ascontiguousarray(image[..., c]), spacing)))
        if mask is not None:
            files.append(write_volume(targets[patient][3], _image(mask, spacing)))
        done.append({"patient": names[patient], "slices": len(slices),
                     "files": [f.name for f in files]})
    return done
