"""NIfTI volumes (``.nii``, ``.nii.gz``) in and out, through nibabel (imported lazily:
``pip install 'mambaseg[nifti]'``). See docs/volumes.md.

A *case* is one volume with its channels on the last axis (3-D: one channel), or one 3-D file
per channel with nnU-Net's suffixes ``CASE_0000.nii.gz``, ``CASE_0001.nii.gz``, ... (for the
LGG models: pre-contrast, FLAIR, post-contrast). ``CASE_seg.nii.gz`` beside it is its ground
truth; ``*_mask`` and ``*_prob`` volumes (what predict writes) are never inputs.

``load_case`` checks a case and returns its voxels as float32 (X, Y, Z, C) with the first
file's image as the reference for the outputs; ``axial_slices`` / ``from_axial`` reorient a
volume to the slice layout of the LGG images and back: axes found from the affine
(``nibabel.orientations.io_orientation``), whatever the order or flips of the stored axes.
An oblique volume is sliced along its voxel axis closest to superior-inferior, not resampled
(``obliquity`` gives the angle; ``oblique_warning`` beyond ``OBLIQUE_DEGREES``).
``normalise`` maps a channel's volume to uint8 0-255 as the LGG slices are. Every problem
raises DataError naming the file; ``write_volume`` writes atomically.
"""
from __future__ import annotations

import gzip
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mambaseg.data.io import IMAGE_SUFFIXES
from mambaseg.errors import DataError, MambasegError
from mambaseg.files import atomic_path

INSTALL_HINT = "pip install 'mambaseg[nifti]'"
SUFFIXES = (".nii.gz", ".nii")
#: name endings of volumes that are never inputs: predict's outputs and ground truth
NOT_INPUTS = ("_mask", "_prob", "_seg")
#: ``CASE_0000.nii.gz``: one file per channel (nnU-Net's naming)
_CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
#: the voxel axes of the LGG slice layout: image columns towards the patient's left, rows
#: towards posterior (anterior at the top, the patient's right on the left: radiological
#: view), slices towards superior; ``axial_slices`` brings every volume to it
SLICE_AXES = ("L", "P", "S")
#: robust range of ``normalise``: percentiles of all voxels (low) and of the voxels above it
ROBUST_PERCENTILES = (0.5, 99.5)
#: a slice axis further than this (degrees) from the superior-inferior direction is warned
#: about (``oblique_warning``): head tilts within it are common in routine axial scans, and
#: so in the LGG training slices; beyond it the slices look unlike axial ones
OBLIQUE_DEGREES = 10.0
#: affines of a case's channel files may differ by this much (mm, per element)
AFFINE_TOLERANCE = 1e-3
_UNITS_MM = {"mm": 1.0, "meter": 1000.0, "micron": 0.001}


def nibabel():
    """The nibabel module, or MambasegError with the install hint."""
    try:
        import nibabel as nib
    except ImportError:
        raise MambasegError("reading and writing NIfTI volumes needs nibabel: "
                            f"{INSTALL_HINT}") from None
    return nib


def is_nifti(path: str | Path) -> bool:
    """Whether the name of ``path`` ends in .nii or .nii.gz (any case)."""
    return Path(path).name.lower().endswith(SUFFIXES)


def volume_stem(path: str | Path) -> str:
    """The file name without .nii / .nii.gz."""
    name = Path(path).name
    for suffix in SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


@dataclass(frozen=True)
class Case:
    """One case: its name (relative to the input folder, POSIX, without suffix), its files
    (one volume, or one per channel in channel order) and its ground truth, if any."""

    name: str
    files: tuple[Path, ...]
    truth: Path | None = None


def _is_input(path: Path) -> bool:
    return (is_nifti(path) and not path.name.startswith(".")
            and not volume_stem(path).endswith(NOT_INPUTS))


def _volumes_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and is_nifti(p)
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def holds_volumes(path: str | Path) -> bool:
    """Whether ``path`` is a NIfTI file or a folder holding one (then predict segments
    volumes)."""
    path = Path(path)
    if path.is_file() or not path.exists():
        return is_nifti(path)
    return any(_is_input(p) for p in _volumes_under(path))


def _truth_of(folder: Path, case: str) -> Path | None:
    for suffix in SUFFIXES:
        cand = folder / f"{case}_seg{suffix}"
        if cand.is_file():
            return cand
    return None


def find_cases(path: str | Path) -> tuple[list[Case], list[str]]:
    """The cases under ``path`` (a file: its case, with its sibling channel files when its name
    ends in ``_NNNN``; a folder: every case below it) and warnings about files left out.
    DataError when ``path`` does not exist or holds no volume."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"input {path} does not exist")
    root = path.parent if path.is_file() else path
    files = [path] if path.is_file() else [p for p in _volumes_under(path) if _is_input(p)]
    if path.is_file():
        m = _CHANNEL_FILE.match(volume_stem(path))
        if m:
            files = [p for p in _volumes_under(root) if p.parent == root and _is_input(p)
                     and (c := _CHANNEL_FILE.match(volume_stem(p))) and c["case"] == m["case"]]
    groups: dict[tuple[Path, str], list[Path]] = {}
    for f in files:
        m = _CHANNEL_FILE.match(volume_stem(f))
        groups.setdefault((f.parent, m["case"] if m else volume_stem(f)), []).append(f)
    cases, warnings = [], []
    for (folder, name), members in sorted(groups.items()):
        members.sort(key=lambda p: volume_stem(p))
        rel = (folder.relative_to(root) / name).as_posix()
        cases.append(Case(rel[2:] if rel.startswith("./") else rel, tuple(members),
                          _truth_of(folder, name)))
    if path.is_dir():
        images = [p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES]
        if images and cases:
            warnings.append(f"{path}: {len(images)} slice image(s) left out: a folder of volumes "
                            "is segmented as volumes; segment the slices in a separate run")
    if not cases:
        raise DataError(f"no NIfTI volumes found in {path} (looked for .nii and .nii.gz files; "
                        f"*{', *'.join(NOT_INPUTS)} volumes excluded)")
    return cases, warnings


# ----------------------------------------------------------------------------- reading

def read_volume(path: str | Path):
    """A NIfTI file as a nibabel image (its header only: voxels are read later);
    DataError naming it when it is not a readable NIfTI file."""
    nib = nibabel()
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        img = nib.load(str(path))
    except Exception as exc:  # noqa: BLE001 - a damaged file fails in many ways
        raise DataError(f"{path}: unreadable NIfTI file ({exc or type(exc).__name__})") from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise DataError(f"{path}: not a NIfTI-1 or NIfTI-2 image ({type(img).__name__})")
    return img


def voxels(img, label, nan_policy: str = "error") -> tuple[np.ndarray, bool, list[str]]:
    """``(float32 voxels, stored as plain uint8, notes)`` of a nibabel image; DataError naming
    ``label`` for a truncated file or (``nan_policy="error"``) NaN/Inf voxels."""
    try:
        data = np.asarray(img.get_fdata(dtype=np.float32))
    except Exception as exc:  # noqa: BLE001 - truncated gzip, short file, bad dtype...
        raise DataError(f"{label}: unreadable or truncated NIfTI file "
                        f"({exc or type(exc).__name__})") from None
    slope, inter = (getattr(img.dataobj, k, None) for k in ("slope", "inter"))
    plain = img.get_data_dtype() == np.uint8 and slope in (None, 1) and inter in (None, 0)
    notes = []
    bad = int(np.count_nonzero(~np.isfinite(data)))
    if bad:
        if nan_policy != "zero":
            raise DataError(f"{label}: non-finite voxels (NaN/Inf): {bad} of {data.size}; "
                            "pass --nan-policy zero to replace them by 0")
        data = np.where(np.isfinite(data), data, 0).astype(np.float32)
        notes.append(f"{bad} non-finite voxel(s) (NaN/Inf) replaced by 0")
    return data, plain, notes


def _as_channels(data: np.ndarray, label) -> np.ndarray:
    """(X, Y, Z, C) from a 3-D, 4-D (channels last) or NIfTI vector (X, Y, Z, 1, C) array."""
    if data.ndim == 5 and data.shape[3] == 1:
        data = data[:, :, :, 0]
    if data.ndim < 3:
        raise DataError(f"{label}: a {data.ndim}-D image of shape {data.shape}, not a volume; "
                        "segment 2-D images as slices (tif, png)")
    if data.ndim > 4:
        raise DataError(f"{label}: a {data.ndim}-D image of shape {data.shape}; expected a 3-D "
                        "volume or a 4-D one with the channels on the last axis")
    return data if data.ndim == 4 else data[..., None]


@dataclass
class Volume:
    """A loaded case: voxels float32 (X, Y, Z, C), whether each channel was stored as plain
    uint8, the reference image (header and affine of the outputs) and notes."""

    name: str
    data: np.ndarray
    plain: list[bool]
    reference: object
    label: str
    notes: list[str] = field(default_factory=list)

    @property
    def channels(self) -> int:
        return int(self.data.shape[3])


def load_images(name: str, images: list[tuple[str, object]], nan_policy: str = "error"
                ) -> Volume:
    """A Volume from ``(label, nibabel image)`` pairs: one volume (channels last), or one 3-D
    image per channel, all of one shape and affine (DataError naming the file otherwise)."""
    if len(images) == 1:
        label, img = images[0]
        data, plain, notes = voxels(img, label, nan_policy)
        data = _as_channels(data, label)
        return Volume(name, data, [plain] * data.shape[3], img, label, notes)
    first_label, first = images[0]
    shape = None
    arrays, plains, notes = [], [], []
    for label, img in images:
        if len(img.shape) != 3:
            raise DataError(f"{label}: a channel file must hold one 3-D volume, got shape "
                            f"{tuple(img.shape)}")
        if shape is not None and tuple(img.shape) != shape:
            raise DataError(f"{label}: shape {tuple(img.shape)} differs from {shape} of "
                            f"{first_label}; a case's channel files must share one grid")
        if not np.allclose(img.affine, first.affine, atol=AFFINE_TOLERANCE):
            raise DataError(f"{label}: its affine differs from that of {first_label}; a "
                            "case's channel files must be co-registered on one grid")
        shape = tuple(img.shape)
        data, plain, more = voxels(img, label, nan_policy)
        arrays.append(data)
        plains.append(plain)
        notes += [f"{Path(label).name}: {n}" for n in more]
    return Volume(name, np.stack(arrays, axis=-1), plains, first, first_label, notes)


def load_case(case: Case, nan_policy: str = "error") -> Volume:
    """Read and check ``case`` (see ``load_images``); channel files must be numbered
    ``_0000`` .. ``_NNNN`` without gaps."""
    stems = [volume_stem(f) for f in case.files]
    if len(case.files) > 1:
        numbers = [int(_CHANNEL_FILE.match(s)["channel"]) for s in stems]
        if numbers != list(range(len(numbers))):
            raise DataError(f"{case.files[0]}: the channel files of case {case.name} are "
                            f"numbered {', '.join(f'{n:04d}' for n in numbers)}; expected "
                            f"0000 .. {len(numbers) - 1:04d} without gaps")
    return load_images(case.name, [(str(f), read_volume(f)) for f in case.files], nan_policy)


# ----------------------------------------------------------------------------- geometry

def voxel_size_mm(img) -> tuple[tuple[float, float, float], list[str]]:
    """The voxel size (mm) along the three spatial axes, from the affine and the header's
    spatial unit (unknown units are taken as mm, with a note)."""
    nib = nibabel()
    sizes = nib.affines.voxel_sizes(img.affine)[:3]
    unit = img.header.get_xyzt_units()[0]
    notes = [] if unit in _UNITS_MM else [f"spatial unit '{unit}' in the header: taken as mm"]
    scale = _UNITS_MM.get(unit, 1.0)
    return tuple(float(s) * scale for s in sizes), notes


def _orientations(affine, label):
    nib = nibabel()
    ornt = nib.orientations.io_orientation(affine)
    if np.isnan(ornt).any():
        raise DataError(f"{label}: the affine gives no orientation to some voxel axis; cannot "
                        "find the axial axis")
    target = nib.orientations.axcodes2ornt(SLICE_AXES)
    return ornt, target


def axial_axis(affine, label="volume") -> int:
    """The voxel axis closest to the superior-inferior direction of the affine."""
    ornt, _ = _orientations(affine, label)
    return int(np.flatnonzero(ornt[:, 0] == 2)[0])


def obliquity(affine, label="volume") -> float:
    """The angle (degrees, 0 to 90) between the voxel axis taken as axial (``axial_axis``) and
    the patient's superior-inferior direction: 0.0 unless the volume is oblique."""
    col = np.asarray(affine, float)[:3, axial_axis(affine, label)]
    return float(np.degrees(np.arctan2(np.hypot(col[0], col[1]), abs(col[2]))))


def oblique_warning(label, degrees: float) -> str | None:
    """The warning for a volume whose slice axis is ``degrees`` from superior-inferior; None
    within ``OBLIQUE_DEGREES``."""
    if degrees <= OBLIQUE_DEGREES:
        return None
    return (f"{label}: oblique volume: its slice axis is {degrees:.1f} degrees from the "
            f"superior-inferior direction (more than {OBLIQUE_DEGREES:g}); it was segmented in "
            "its voxel grid, as stored (not resampled), so its slices are tilted from axial; "
            "the mask is on the input's grid")


def axial_order(affine, count: int, label="volume") -> list[int]:
    """For each slice of ``axial_slices`` (inferior to superior), its index along the axial
    axis of the stored volume."""
    ornt, _ = _orientations(affine, label)
    flip = ornt[int(np.flatnonzero(ornt[:, 0] == 2)[0]), 1] < 0
    return list(range(count - 1, -1, -1)) if flip else list(range(count))


def axial_slices(data: np.ndarray, affine, label="volume") -> np.ndarray:
    """``data`` (X, Y, Z, ...) as axial slices in the LGG layout: (slices, rows, columns, ...),
    slices inferior to superior, rows anterior to posterior, columns right to left."""
    nib = nibabel()
    ornt, target = _orientations(affine, label)
    canon = nib.orientations.apply_orientation(data, nib.orientations.ornt_transform(ornt, target))
    return np.ascontiguousarray(np.swapaxes(canon, 0, 2))


def from_axial(stack: np.ndarray, affine, label="volume") -> np.ndarray:
    """The inverse of ``axial_slices``: a (slices, rows, columns) stack back on the voxel grid
    of the volume ``affine`` belongs to."""
    nib = nibabel()
    ornt, target = _orientations(affine, label)
    canon = np.swapaxes(stack, 0, 2)
    return np.ascontiguousarray(
        nib.orientations.apply_orientation(canon, nib.orientations.ornt_transform(target, ornt)))


def normalise(channel: np.ndarray, plain: bool) -> tuple[np.ndarray, dict]:
    """One channel's volume as uint8 0-255 (the scale of the LGG slices) and how: a volume
    stored as plain uint8 is taken as it is; any other is mapped linearly from its robust
    range [low, high] (``ROBUST_PERCENTILES``: low of all voxels, high of those above low) to
    [0, 255], clipped."""
    if plain:
        return np.clip(np.rint(channel), 0, 255).astype(np.uint8), {"method": "uint8 as stored"}
    lo = float(np.percentile(channel, ROBUST_PERCENTILES[0]))
    above = channel[channel > lo]
    hi = float(np.percentile(above, ROBUST_PERCENTILES[1])) if above.size else lo
    info = {"method": "robust min/max", "low": lo, "high": hi}
    if hi <= lo:
        return np.zeros(channel.shape, np.uint8), {**info, "note": "constant volume"}
    scaled = (channel - lo) * (255.0 / (hi - lo))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8), info


# ----------------------------------------------------------------------------- writing

def like(reference, data: np.ndarray, description: str = "mambaseg"):
    """A NIfTI image of ``data`` (3-D) on the grid of ``reference``: its affine, header fields
    and qform/sform codes, its data type that of ``data``, no intensity scaling."""
    hdr = reference.header.copy()
    out = type(reference)(data, reference.affine, hdr)
    out.set_qform(reference.get_qform(), int(reference.header["qform_code"]))
    out.set_sform(reference.get_sform(), int(reference.header["sform_code"]))
    out.set_data_dtype(data.dtype)
    out.header.set_slope_inter(1, 0)
    out.header["intent_code"] = 0
    out.header["cal_min"], out.header["cal_max"] = float(data.min(initial=0)), \
        float(data.max(initial=0))
    out.header["descrip"] = description.encode()[:79]
    return out


def write_volume(path: str | Path, img) -> Path:
    """Write a NIfTI image to ``path`` (gzip-compressed for .gz) atomically."""
    raw = img.to_bytes()
    if str(path).lower().endswith(".gz"):
        raw = gzip.compress(raw, compresslevel=6, mtime=0)
    with atomic_path(path) as tmp:
        tmp.write_bytes(raw)
    return Path(path)

