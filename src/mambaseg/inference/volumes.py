"""Segmenting NIfTI volumes: ``run_predict_volumes`` (``mambaseg predict -i`` given volumes) and
``segment_volume`` (the Python API, exported as ``mambaseg.segment_volume``). See
docs/volumes.md.

Each case (``data.nifti``) is checked, each channel normalised to 0-255 as the LGG slices are,
cut into axial slices in the LGG layout (axes found from the affine), segmented slice by slice
as ``predict`` segments images (resized to the model's training size, the probabilities resized
back and thresholded), post-processed as one volume, and put back on the input's voxel grid.
For each case ``run_predict_volumes`` writes ``OUTDIR/<case>_mask.nii.gz`` (uint8 0/1: the
input's shape, affine, qform/sform codes), optionally ``<case>_prob.nii.gz`` (float32) and
``<case>_overlay.png`` (``inference.montage``), then one ``OUTDIR/summary.json`` with a record per
case (``case_record``: tumour volume in mL, 3-D connected components, slices with tumour).
"""
from __future__ import annotations

import math
import time
import warnings
from pathlib import Path

import numpy as np
from scipy import ndimage

from mambaseg._version import __version__
from mambaseg.data import nifti as N
from mambaseg.data.channels import LGG_CHANNELS
from mambaseg.device import resolve_device
from mambaseg.errors import DataError, MambasegError
from mambaseg.files import prepare_dir, write_json
from mambaseg.inference.loading import load_model, load_shipped_model, source_label
from mambaseg.inference.model_info import in_channels, model_name
from mambaseg.inference.montage import write_montage
from mambaseg.inference.postprocess import postprocess_masks, resolve_postprocess
from mambaseg.inference.predict_inputs import (MAX_PIXELS, Item, PredictResult, check_outdir,
                                               check_pixels, check_targets, model_channels,
                                               reason)
from mambaseg.inference.runner import image_probs
from mambaseg.metrics import dice_from_counts
from mambaseg.models import pretrained
from mambaseg.progress import progress_bar

SUFFIXES = {"mask": "_mask.nii.gz", "prob": "_prob.nii.gz", "overlay": "_overlay.png"}
FLAIR_ONLY = ("FLAIR",)
TRAIN_FLAIR = "'mambaseg train --channels flair'"


def volume_paths(outdir: Path, name: str, probabilities: bool = False,
                 overlay: bool = False) -> dict[str, Path]:
    """The files written for case ``name``: keys ``mask`` and optionally ``prob``, ``overlay``."""
    kinds = ["mask"] + (["prob"] if probabilities else []) + (["overlay"] if overlay else [])
    return {k: outdir / (name + SUFFIXES[k]) for k in kinds}


# ----------------------------------------------------------------------------- models

def channel_plan(net, count: int, label, model_label: str) -> tuple[list[int], str | None]:
    """Which of a case's ``count`` channels ``net`` takes, and a note: all of them when the
    counts agree; the FLAIR channel (1) of three for a one-channel model. DataError naming
    ``label`` otherwise."""
    n, names = in_channels(net), model_channels(net)
    if count == n:
        return list(range(count)), None
    if n == 1 and count == 3 and names in (None, FLAIR_ONLY):
        return [1], "FLAIR (channel 1 of 3) taken for a FLAIR-only model"
    takes = f"{n} channel(s)" + (f" ({', '.join(names)})" if names else "")
    if count == 1 and n == 3:
        raise DataError(f"{label}: one channel (a FLAIR volume alone?), but {model_label} takes "
                        f"{takes}; give all three (CASE_0000..CASE_0002.nii.gz, or one 4-D "
                        f"volume with them on the last axis) or a FLAIR-only model (--checkpoint "
                        f"of a run of {TRAIN_FLAIR})")
    raise DataError(f"{label}: {count} channels (the last axis of a 4-D volume, or channel "
                    f"files), but {model_label} takes {takes}; mambaseg's models take 3 "
                    f"({', '.join(LGG_CHANNELS)}) or FLAIR alone")


class ModelPicker:
    """The model for each case: the one given (``model`` / ``checkpoint``, loaded at once),
    else the shipped model for the case's channel count (loaded when first needed)."""

    def __init__(self, model=None, checkpoint=None, device="cpu"):
        self.device, self.cache = device, {}
        self.given = model is not None or checkpoint is not None
        if self.given:
            net = load_model(model, checkpoint, device)
            self.cache["given"] = (net, source_label(model, checkpoint, net))

    def pick(self, volume: N.Volume) -> tuple[object, str, list[int], str | None]:
        """``(model, its label, channels to take, note)`` for ``volume``; DataError naming its
        file when no model fits."""
        if self.given:
            net, label = self.cache["given"]
            return (net, label, *channel_plan(net, volume.channels, volume.label, label))
        count = volume.channels
        if count not in self.cache:
            self.cache[count] = self._shipped(count, volume.label)
        net, label = self.cache[count]
        return (net, label, *channel_plan(net, count, volume.label, label))

    def _shipped(self, count: int, label) -> tuple[object, str]:
        name = pretrained.shipped_for(count, label, "volume")
        return load_shipped_model(name, self.device), f"shipped:{name}"


# ----------------------------------------------------------------------------- one volume

def segment_loaded(volume: N.Volume, net, keep: list[int], threshold: float = 0.5,
                   batch_size: int = 8, device="cpu", amp: bool = False, rescale: bool = True,
                   pp=None, max_pixels: int = MAX_PIXELS) -> dict:
    """Segment a loaded volume's channels ``keep`` with ``net``: returns ``slices`` (the
    normalised axial slices, (K, H, W, C) uint8), ``probs`` and ``masks`` ((K, H, W), after
    ``pp``), ``raw`` (before it), ``normalisation`` (one entry per channel) and ``mask`` /
    ``prob`` on the input's voxel grid."""
    affine = volume.reference.affine
    channels, norm = [], []
    for c in keep:
        u8, info = N.normalise(volume.data[..., c], volume.plain[c])
        channels.append(u8)
        norm.append(info)
    slices = N.axial_slices(np.stack(channels, axis=-1), affine, volume.label)
    check_pixels(volume.label, net, slices.shape[1], slices.shape[2], rescale, max_pixels)
    probs = np.stack(image_probs(net, list(slices), batch_size, device, amp, rescale,
                                 max_pixels))
    raw = probs > threshold
    masks = np.stack(postprocess_masks(list(raw), [volume.name] * len(raw), pp))
    return {"slices": slices, "probs": probs, "raw": raw, "masks": masks,
            "normalisation": norm,
            "mask": N.from_axial(masks.astype(np.uint8), affine, volume.label),
            "prob": N.from_axial(probs.astype(np.float32), affine, volume.label)}


def case_record(volume: N.Volume, mask: np.ndarray) -> dict:
    """The geometry and tumour measures of a mask on ``volume``'s grid: voxel size (mm),
    orientation codes, axial axis and its angle to superior-inferior (``obliquity_degrees``,
    ``nifti.obliquity``), tumour voxels and volume (mL), 3-D connected components
    (26-connectivity, as the post-processing's), slices with tumour (indices along the axial
    axis of the stored volume)."""
    nib = N.nibabel()
    ref = volume.reference
    sizes, notes = N.voxel_size_mm(ref)
    axis = N.axial_axis(ref.affine, volume.label)
    others = tuple(i for i in range(3) if i != axis)
    _, components = ndimage.label(mask > 0, structure=np.ones((3, 3, 3), dtype=bool))
    voxels = int(np.count_nonzero(mask))
    inplane = [sizes[i] for i in others]
    if max(inplane) > 1.1 * min(inplane):
        notes.append(f"in-plane voxels of {inplane[0]:g} x {inplane[1]:g} mm are not square: "
                     "slices were resized as images, not resampled")
    return {"shape": [int(s) for s in mask.shape], "voxel_size_mm": [round(s, 6) for s in sizes],
            "orientation": "".join(nib.aff2axcodes(ref.affine)), "axial_axis": axis,
            "obliquity_degrees": round(N.obliquity(ref.affine, volume.label), 1),
            "tumour_voxels": voxels,
            "tumour_volume_ml": round(voxels * math.prod(sizes) / 1000.0, 4),
            "components": int(components),
            "slices_with_tumour": np.flatnonzero(mask.any(axis=others)).tolist(),
            "notes": notes}


def truth_record(path: Path, mask: np.ndarray) -> dict:
    """Dice of ``mask`` against the ground-truth volume ``path`` (or why it could not be read)."""
    try:
        truth, _, _ = N.voxels(N.read_volume(path), path)
    except DataError as exc:
        return {"truth": path.name, "truth_error": reason(exc, path)}
    if truth.shape != mask.shape:
        return {"truth": path.name, "truth_error": f"shape {truth.shape} differs from {mask.shape}"}
    m, t = mask > 0, truth > 0
    tp, fp, fn = int((m & t).sum()), int((m & ~t).sum()), int((~m & t).sum())
    return {"truth": path.name, "truth_voxels": tp + fn, "tp": tp, "fp": fp, "fn": fn,
            "dice": float(dice_from_counts(tp, fp, fn))}


def _montage_inputs(volume: N.Volume, seg: dict, keep: list[int]):
    """The FLAIR slices (or the one channel) and one label per slice for the montage."""
    shown = keep.index(1) if len(keep) == 3 else 0
    order = N.axial_order(volume.reference.affine, len(seg["masks"]), volume.label)
    return seg["slices"][..., shown], [f"slice {i}" for i in order]


def _write(paths: dict, volume: N.Volume, seg: dict, keep: list[int], rec: dict) -> None:
    ref = volume.reference
    N.write_volume(paths["mask"], N.like(ref, seg["mask"], "mambaseg predict: tumour mask"))
    if "prob" in paths:
        N.write_volume(paths["prob"], N.like(ref, seg["prob"], "mambaseg predict: probability"))
    if "overlay" in paths:
        images, labels = _montage_inputs(volume, seg, keep)
        title = (f"{volume.name}: {rec['tumour_volume_ml']:.2f} mL, {rec['components']} "
                 f"component(s), {len(rec['slices_with_tumour'])} slice(s)")
        write_montage(paths["overlay"], images, seg["masks"], labels, title)


# ----------------------------------------------------------------------------- the command

def run_predict_volumes(input, outdir, model=None, checkpoint=None, threshold: float = 0.5,
                        probabilities: bool = False, overlay: bool = False,
                        device: str = "auto", batch_size: int = 8, overwrite: bool = False,
                        amp: bool = False, progress: bool = False, rescale: bool = True,
                        postprocess="auto", nan_policy: str = "error",
                        max_pixels: int = MAX_PIXELS) -> PredictResult:
    """Segment every case of ``input`` (a NIfTI file or a folder of them) into ``outdir``
    (see the module docstring; arguments as ``inference.predict.run_predict``).

    Checked before anything is written: the cases, the output folder (not inside the input,
    holding no input), the model, the outputs (none may exist unless ``overwrite``); a single
    case is read and matched to a model first, so that its DataError leaves nothing behind.
    With several cases, one that cannot be segmented is skipped and reported."""
    input, outdir = Path(input), Path(outdir)
    cases, left_out = N.find_cases(input)
    check_outdir(outdir, input, [Item(f, f.name) for c in cases for f in c.files])
    dev = resolve_device(device)
    picker = ModelPicker(model, checkpoint, dev)
    ready = {}
    if len(cases) == 1:
        vol = N.load_case(cases[0], nan_policy)
        ready[cases[0].name] = (vol, picker.pick(vol))
    targets = {c.name: volume_paths(outdir, c.name, probabilities, overlay) for c in cases}
    check_targets(outdir, targets, overwrite)
    prepare_dir(outdir)

    t0 = time.perf_counter()
    res = PredictResult({}, outdir, warnings=left_out)
    used: dict[str, dict] = {}
    bar = progress_bar(len(cases), "predict", progress and len(cases) > 1, unit="volume")
    for case in cases:
        try:
            vol, (net, label, keep, note) = ready.pop(case.name, None) or _load(case, picker,
                                                                                 nan_policy)
            pp, pp_source = resolve_postprocess(postprocess, net)
            seg = segment_loaded(vol, net, keep, threshold, batch_size, dev, amp, rescale, pp,
                                 max_pixels)
        except DataError as exc:
            res.skipped.append({"input": case.name, "reason": reason(exc, case.files[0])})
            bar.update(1)
            continue
        rec = _record(case, vol, net, label, keep, note, seg, outdir, targets[case.name], pp)
        oblique = N.oblique_warning(vol.label, rec["obliquity_degrees"])
        res.warnings += [oblique] if oblique else []
        _write(targets[case.name], vol, seg, keep, rec)
        used.setdefault(label, {"model": rec["model"], "postprocess": pp.to_dict(),
                                "postprocess_source": pp_source})
        res.written.append(rec)
        bar.update(1)
    bar.close()
    res.summary = _summary(input, outdir, used, threshold, dev, res, time.perf_counter() - t0,
                           rescale, nan_policy, max_pixels)
    write_json(outdir / "summary.json", res.summary)
    return res


def _load(case: N.Case, picker: ModelPicker, nan_policy: str):
    vol = N.load_case(case, nan_policy)
    return vol, picker.pick(vol)


def _record(case, vol, net, label, keep, note, seg, outdir, paths, pp) -> dict:
    rec = {"case": case.name, "inputs": [f.name for f in case.files],
           **{k: p.relative_to(outdir).as_posix() for k, p in paths.items()},
           "model": model_name(net), "checkpoint": label,
           "channels": list(model_channels(net) or (FLAIR_ONLY if len(keep) == 1 else
                                                    [f"channel {i}" for i in keep])),
           "normalisation": seg["normalisation"], **case_record(vol, seg["mask"])}
    rec["notes"] = vol.notes + ([note] if note else []) + rec["notes"]
    if pp.active:
        rec["removed_voxels"] = int(seg["raw"].sum()) - int(seg["masks"].sum())
    if case.truth is not None:
        rec.update(truth_record(case.truth, seg["mask"]))
    return rec


def _summary(input, outdir, used, threshold, dev, res, seconds, rescale, nan_policy,
             max_pixels) -> dict:
    scored = [r for r in res.written if "dice" in r]
    return {"input": str(input), "output": str(outdir), "kind": "volumes",
            "model": "+".join(dict.fromkeys(u["model"] for u in used.values())) or None,
            "checkpoint": " | ".join(used) or None, "models": used,
            "threshold": threshold, "device": str(dev), "rescale": bool(rescale),
            "nan_policy": nan_policy, "max_pixels": int(max_pixels),
            "counts": {"inputs": len(res.written) + len(res.skipped),
                       "written": len(res.written), "skipped": len(res.skipped),
                       "with_truth": len(scored)},
            "dice_mean": float(np.mean([r["dice"] for r in scored])) if scored else None,
            "cases": res.written, "skipped": res.skipped, "warnings": res.warnings,
            "seconds": round(seconds, 3), "mambaseg_version": __version__}


# ----------------------------------------------------------------------------- Python API

def segment_volume(image, model=None, checkpoint=None, threshold: float = 0.5,
                   device: str = "auto", batch_size: int = 8, postprocess="auto",
                   nan_policy: str = "error", rescale: bool = True, amp: bool = False):
    """Segment one volume: returns ``(mask, summary)``, ``mask`` a nibabel image (uint8 0/1,
    the input's grid and header) and ``summary`` the case's record (as in predict's
    summary.json: tumour volume in mL, components, slices with tumour...).

    ``image``: a path (a volume, or one of a case's ``_NNNN`` channel files: the case), a
    nibabel image (3-D, or 4-D with the channels last), or a list of 3-D images or paths (one
    per channel). ``model`` / ``checkpoint``: as ``run_predict`` (None: the shipped model for
    the volume's channel count); ``postprocess``: ``"auto"`` (the model's recommendation),
    None or a PostProcess. An oblique volume (``nifti.OBLIQUE_DEGREES``) gives a UserWarning.
    """
    if isinstance(image, (str, Path)):
        cases, _ = N.find_cases(image)
        if len(cases) != 1:
            raise MambasegError(f"{image}: segment_volume takes one case, found {len(cases)}")
        case, vol = cases[0], N.load_case(cases[0], nan_policy)
    else:
        parts = list(image) if isinstance(image, (list, tuple)) else [image]
        loaded = [(str(p), N.read_volume(p)) if isinstance(p, (str, Path))
                  else (p.get_filename() or f"<image {i}>", p) for i, p in enumerate(parts)]
        vol = N.load_images(N.volume_stem(loaded[0][0]), loaded, nan_policy)
        case = N.Case(vol.name, ())
    dev = resolve_device(device)
    net, label, keep, note = ModelPicker(model, checkpoint, dev).pick(vol)
    pp, _ = resolve_postprocess(postprocess, net)
    seg = segment_loaded(vol, net, keep, threshold, batch_size, dev, amp, rescale, pp)
    rec = _record(case, vol, net, label, keep, note, seg, Path("."), {}, pp)
    oblique = N.oblique_warning(vol.label, rec["obliquity_degrees"])
    if oblique:
        warnings.warn(oblique, stacklevel=2)
    return N.like(vol.reference, seg["mask"], "mambaseg segment_volume: tumour mask"), rec
