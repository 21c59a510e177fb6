"""Segmenting image files or arrays: ``run_predict`` (the ``mambaseg predict`` command) and
``segment`` (the Python API, exported as ``mambaseg.segment``).

For each input image ``<rel>.<ext>`` (``rel`` relative to the input folder, or the file name),
``run_predict`` writes ``OUTDIR/<rel>_mask.png`` (uint8 0/255, the input's size) and optionally
``<rel>_prob.png`` (probability x 255) and ``<rel>_overlay.png`` (the image, mask tinted red
with a red contour), then ``OUTDIR/summary.json``. Every output path is checked before anything
is written, and every write is atomic.
"""
from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mambaseg.engine import metrics
from mambaseg.engine.inference import (in_channels, load_checkpoint, load_shipped_model,
                                       model_name, predict_probs, prepare_dir, resolve_device)
from mambaseg.errors import DataError, MambasegError

#: suffixes of the files written per image
SUFFIXES = {"mask": "_mask.png", "prob": "_prob.png", "overlay": "_overlay.png"}
#: red tint strength of the overlay inside the mask
OVERLAY_ALPHA = 0.35
#: a progress bar is shown for more inputs than this
PROGRESS_MIN = 5


@dataclass(frozen=True)
class Item:
    """One input image: its path, its path relative to the input root, its ground-truth mask."""

    path: Path
    rel: str
    truth: Path | None = None


@dataclass
class PredictResult:
    """What ``run_predict`` did; ``summary`` is what was written to ``OUTDIR/summary.json``."""

    summary: dict
    outdir: Path
    written: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def exit_status(self) -> int:
        """1 if any input was skipped, else 0."""
        return 1 if self.skipped else 0


# ----------------------------------------------------------------------------- inputs

def _truth_beside(image: Path) -> Path | None:
    from mambaseg.data.io import MASK_SUFFIXES

    for suffix in MASK_SUFFIXES:
        for cand in (image.with_name(f"{image.stem}_mask{suffix}"),
                     image.with_name(f"{image.stem}_mask{suffix.upper()}")):
            if cand.is_file():
                return cand
    return None


def collect_inputs(path: str | Path) -> tuple[list[Item], list[str]]:
    """The images to segment under ``path`` and warnings about files left out.

    A file is taken as it is. A folder is searched recursively for images (hidden files and
    ``*_mask.*`` files excluded; a ``<stem>_mask`` file beside an image is its ground truth), in
    (patient, slice) order. Raises DataError when ``path`` does not exist or holds no image.
    """
    from mambaseg.data.layout import scan

    path = Path(path)
    if not path.exists():
        raise DataError(f"input {path} does not exist")
    if path.is_file():
        return [Item(path, path.name, _truth_beside(path))], []
    found = scan(path)
    items = [Item(s.image, s.image.relative_to(path).as_posix(), s.mask) for s in found.slices]
    warnings = [f"{f}: {why}" for f, why in found.problems]
    if not items:
        from mambaseg.data.io import IMAGE_SUFFIXES

        raise DataError(f"no images found in {path} (looked for {', '.join(IMAGE_SUFFIXES)} "
                        "files, *_mask files excluded)")
    return items, warnings


def output_paths(outdir: Path, rel: str, probabilities: bool = False,
                 overlay: bool = False) -> dict[str, Path]:
    """The files written for the input ``rel``: keys ``mask`` and optionally ``prob``, ``overlay``."""
    stem = rel.rsplit(".", 1)[0] if "." in rel.rsplit("/", 1)[-1] else rel
    kinds = ["mask"] + (["prob"] if probabilities else []) + (["overlay"] if overlay else [])
    return {k: outdir / (stem + SUFFIXES[k]) for k in kinds}


def _inside(child: Path, parent: Path) -> bool:
    child, parent = child.resolve(), parent.resolve()
    return child == parent or parent in child.parents


# ----------------------------------------------------------------------------- models

def get_model(model=None, checkpoint: str | Path | None = None, device="cpu"):
    """The model to segment with: a module as given, a checkpoint directory, the shipped weights
    of a model name, or (nothing given) the best shipped model. A string ``model`` naming an
    existing directory is taken as a checkpoint."""
    if model is not None and checkpoint is not None:
        raise MambasegError("pass either --model NAME or --checkpoint DIR, not both")
    if isinstance(model, torch.nn.Module):
        return model.to(device).eval()
    if checkpoint is not None:
        return load_checkpoint(checkpoint, device)
    if isinstance(model, (str, os.PathLike)) and Path(model).is_dir():
        return load_checkpoint(model, device)
    return load_shipped_model(None if model is None else str(model), device)


def _checkpoint_label(model, checkpoint, net) -> str:
    """The checkpoint directory, ``shipped:<name>`` for shipped weights, or ``in-memory``."""
    if checkpoint is not None:
        return str(checkpoint)
    if isinstance(model, torch.nn.Module):
        return "in-memory"
    if isinstance(model, (str, os.PathLike)) and Path(model).is_dir():
        return str(model)
    return f"shipped:{model if model is not None else model_name(net)}"


# ----------------------------------------------------------------------------- images

def overlay_image(image: np.ndarray, mask: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """RGB uint8 (H, W, 3): ``image`` with ``mask`` tinted red and its contour in pure red."""
    img = np.asarray(image)
    if img.ndim == 2:
        img = img[:, :, None]
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    out = img[:, :, :3].astype(np.float32)
    m = np.asarray(mask) > 0
    red = np.array([255.0, 0.0, 0.0], np.float32)
    out[m] = (1 - alpha) * out[m] + alpha * red
    out[metrics.boundary(m)] = red
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _write_outputs(paths: dict[str, Path], image: np.ndarray, prob: np.ndarray,
                   mask: np.ndarray) -> None:
    from mambaseg.data.io import write_png

    write_png(paths["mask"], mask.astype(np.uint8) * 255)
    if "prob" in paths:
        write_png(paths["prob"], np.clip(np.rint(prob * 255.0), 0, 255).astype(np.uint8))
    if "overlay" in paths:
        write_png(paths["overlay"], overlay_image(image, mask))


# ----------------------------------------------------------------------------- the command

def run_predict(input: str | Path, outdir: str | Path, model=None,
                checkpoint: str | Path | None = None, threshold: float = 0.5,
                probabilities: bool = False, overlay: bool = False, device: str = "auto",
                batch_size: int = 8, overwrite: bool = False, amp: bool = False,
                progress: bool = False, rescale: bool = True) -> PredictResult:
    """Segment every image of ``input`` (a file or a folder) into ``outdir``.

    Images are resized to the scale the model was trained at and the masks back to each image's
    size (``rescale=False``: zero padding only; see ``mambaseg.engine.inference``).

    Checks, in order and before writing anything: the input exists and holds images, ``outdir``
    is not ``input`` or inside it, the device, the model, that no output exists (unless
    ``overwrite``) and that ``outdir`` is writable. Unreadable images are skipped and reported.
    Where ground-truth masks sit beside the images, the Dice against them is computed too.
    """
    input, outdir = Path(input), Path(outdir)
    items, warnings = collect_inputs(input)
    if input.is_dir() and _inside(outdir, input):
        raise MambasegError(f"output directory {outdir} is inside the input folder {input}; "
                            "predict never writes into its input: choose another -o")
    dev = resolve_device(device)
    net = get_model(model, checkpoint, dev)
    channels = in_channels(net)
    targets = {it.rel: output_paths(outdir, it.rel, probabilities, overlay) for it in items}
    _check_targets(outdir, targets, overwrite)
    prepare_dir(outdir)

    t0 = time.perf_counter()
    res = PredictResult({}, outdir, warnings=warnings)
    records: list[dict] = []
    bar = _bar(len(items), progress and len(items) > PROGRESS_MIN)
    pending: list[tuple[Item, np.ndarray, str | None]] = []

    def flush() -> None:
        if not pending:
            return
        batch = torch.from_numpy(np.stack([img for _, img, _ in pending])).permute(0, 3, 1, 2)
        probs = predict_probs(net, batch, batch_size=batch_size, device=dev, amp=amp,
                              rescale=rescale)[:, 0].numpy()
        for (item, img, note), prob in zip(pending, probs):
            mask = prob > threshold
            _write_outputs(targets[item.rel], img, prob, mask)
            records.append(_record(item, outdir, targets[item.rel], mask, note))
            bar.update(1)
        pending.clear()

    from mambaseg.data.io import read_image_noted

    for item in items:
        try:
            img, note = read_image_noted(item.path, channels=channels)
        except DataError as exc:
            res.skipped.append({"input": item.rel, "reason": _reason(exc, item.path)})
            bar.update(1)
            continue
        if pending and (img.shape != pending[0][1].shape or len(pending) >= batch_size):
            flush()
        pending.append((item, img, note))
    flush()
    bar.close()

    res.written = records
    res.summary = _summary(input, outdir, net, model, checkpoint, threshold, dev, records,
                           res, time.perf_counter() - t0, rescale)
    from mambaseg.engine.evaluate import write_json

    write_json(outdir / "summary.json", res.summary)
    return res


def _check_targets(outdir: Path, targets: dict[str, dict[str, Path]], overwrite: bool) -> None:
    if outdir.exists() and not outdir.is_dir():
        raise MambasegError(f"output directory {outdir} is a file")
    seen: dict[Path, str] = {}
    for rel, paths in targets.items():
        for p in paths.values():
            if p in seen:
                raise MambasegError(f"inputs {seen[p]} and {rel} would both write {p}; "
                                    "rename one or segment them separately")
            seen[p] = rel
    if overwrite:
        return
    existing = [p for p in [*seen, outdir / "summary.json"] if p.exists()]
    if existing:
        more = f" and {len(existing) - 1} more output file(s) already exist" if len(existing) > 1 \
            else " already exists"
        raise MambasegError(f"{existing[0]}{more}; pass --overwrite to replace them "
                            "(nothing was written)")


def _reason(exc: Exception, path: Path) -> str:
    msg = str(exc)
    prefix = f"{path}: "
    return msg[len(prefix):] if msg.startswith(prefix) else msg


def _record(item: Item, outdir: Path, paths: dict[str, Path], mask: np.ndarray,
            note: str | None) -> dict:
    rec = {"input": item.rel, "mask": paths["mask"].relative_to(outdir).as_posix(),
           "tumour_pixels": int(mask.sum()), "notes": note,
           "size": [int(mask.shape[0]), int(mask.shape[1])]}
    for k in ("prob", "overlay"):
        if k in paths:
            rec[k] = paths[k].relative_to(outdir).as_posix()
    if item.truth is not None:
        _score(rec, item.truth, mask)
    return rec


def _score(rec: dict, truth_path: Path, mask: np.ndarray) -> None:
    """Add the counts and Dice against the ground truth at ``truth_path`` to ``rec``."""
    from mambaseg.data.io import read_mask

    rec["truth"] = truth_path.name
    try:
        truth = read_mask(truth_path)
    except DataError as exc:
        rec["truth_error"] = _reason(exc, truth_path)
        return
    if truth.shape != mask.shape:
        rec["truth_error"] = f"mask size {truth.shape} differs from image size {mask.shape}"
        return
    tp, fp, fn = (int(v[0]) for v in metrics.dice_counts(mask[None], truth[None]))
    rec.update(truth_pixels=tp + fn, tp=tp, fp=fp, fn=fn,
               dice=float(metrics.dice_from_counts(tp, fp, fn)))


def dice_of(records: Sequence[dict]) -> dict | None:
    """Pooled and per-slice-mean Dice over the records scored against a ground truth."""
    scored = [r for r in records if "dice" in r]
    if not scored:
        return None
    tp, fp, fn = (np.array([r[k] for r in scored]) for k in ("tp", "fp", "fn"))
    return {"pooled": float(metrics.dice_from_counts(tp.sum(), fp.sum(), fn.sum())),
            "slice_mean": float(metrics.dice_from_counts(tp, fp, fn).mean()),
            "n": len(scored), "n_tumour": int(((tp + fn) > 0).sum()),
            "tp": int(tp.sum()), "fp": int(fp.sum()), "fn": int(fn.sum())}


def _summary(input, outdir, net, model, checkpoint, threshold, dev, records, res,
             seconds, rescale) -> dict:
    from mambaseg import __version__

    return {
        "input": str(input), "output": str(outdir), "model": model_name(net),
        "checkpoint": _checkpoint_label(model, checkpoint, net), "threshold": threshold,
        "device": str(dev),
        "model_input_size": getattr(net, "input_size", None), "rescale": bool(rescale),
        "counts": {"inputs": len(records) + len(res.skipped), "written": len(records),
                   "skipped": len(res.skipped),
                   "converted": sum(1 for r in records if r["notes"]),
                   "with_truth": sum(1 for r in records if "dice" in r)},
        "dice": dice_of(records),
        "images": records, "skipped": res.skipped, "warnings": res.warnings,
        "seconds": round(seconds, 3), "mambaseg_version": __version__,
    }


def _bar(total: int, enabled: bool):
    from mambaseg.engine.progress import progress_bar

    return progress_bar(total, "predict", enabled, unit="image")


# ----------------------------------------------------------------------------- Python API

def _as_image(x, channels: int) -> tuple[np.ndarray, str | None]:
    from mambaseg.data.io import image_from_array, read_image_noted

    if isinstance(x, (str, os.PathLike)):
        return read_image_noted(x, channels=channels)
    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if arr.dtype.kind == "f" and arr.size and 0.0 <= arr.min() and arr.max() <= 1.0:
        arr = np.clip(np.rint(arr * 255.0), 0, 255).astype(np.uint8)  # float [0, 1] as is
    return image_from_array(arr, "<array>", channels)


def segment(images_or_paths, model=None, threshold: float = 0.5, device: str = "auto",
            batch_size: int = 8, return_probs: bool = False, rescale: bool = True):
    """Segment images: returns uint8 (H, W) masks in {0, 1}, one per input (each the input's size).

    ``images_or_paths``: a path, an (H, W) / (H, W, C) array (uint8, or float in [0, 1]), or a
    list of those; a single input gives a single mask. ``model``: None (the best shipped
    model), a model name (its shipped weights), a checkpoint directory, or a loaded model.
    ``return_probs=True`` returns float32 probabilities instead of masks; ``rescale=False`` runs
    the model at each image's own scale (zero padding only) instead of its training scale.
    """
    single = isinstance(images_or_paths, (str, os.PathLike, np.ndarray, torch.Tensor))
    inputs = [images_or_paths] if single else list(images_or_paths)
    dev = resolve_device(device)
    net = get_model(model, None, dev)
    channels = in_channels(net)
    outs = []
    for x in inputs:
        img, _ = _as_image(x, channels)
        batch = torch.from_numpy(img).permute(2, 0, 1)[None]
        prob = predict_probs(net, batch, batch_size=batch_size, device=dev,
                             rescale=rescale)[0, 0].numpy()
        outs.append(prob if return_probs else (prob > threshold).astype(np.uint8))
    return outs[0] if single else outs
