"""The inputs of ``mambaseg predict``: finding the images and their ground truth, keeping masks
away from where they could be taken for ground truth, and checking each image before it runs.

No silent garbage:

- the output folder may not hold any input image, nor lie inside an input folder, so a written
  ``<stem>_mask.png`` never lands where a later run (or a person) would take it for the
  ground truth of an image;
- every PNG predict writes carries the text chunk ``Software: mambaseg predict ...``; a
  ``<stem>_mask`` file carrying it, or listed by a predict ``summary.json`` in its folder or a
  folder above, is never taken as ground truth (a warning says so), and predict's own
  ``_prob`` / ``_overlay`` PNGs are never taken as inputs;
- an image is checked before its pixels are decoded: the pixels the model would run on (after
  resizing and padding) must not exceed ``max_pixels``; then it must decode to one 2-D slice
  with finite pixels (``nan_policy="zero"`` replaces NaN/Inf by 0, with a note).

Imports no torch: ``predict --onnx`` (``onnx_runtime``) shares it with ``predict``.
"""
from __future__ import annotations

import json
import os
import warnings as _warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from mambaseg._version import __version__
from mambaseg.data.channels import CHOICES, checkpoint_channels, choice_of, select_channels
from mambaseg.data.io import (IMAGE_SUFFIXES, MASK_SUFFIXES, NonFiniteError, decode,
                              image_from_array, image_size, png_text, read_mask, write_png)
from mambaseg.data.layout import scan
from mambaseg.errors import DataError, MambasegError
from mambaseg.files import prepare_dir
from mambaseg.inference.model_info import forward_size
from mambaseg.inference.postprocess import postprocess_masks
from mambaseg.metrics import dice_from_counts

#: default limit on the pixels one image may have at the model's input (after padding)
MAX_PIXELS = 4096 * 4096
#: rough peak memory of a forward pass per input pixel, for the messages (measured on the CPU,
#: float32: about 1.3 KB for unet, 0.8 KB for segformer, 0.3 KB for ulvm_unet_v6)
BYTES_PER_PIXEL = 1024
#: the PNG text chunk key marking predict's outputs, and the start of its value
TAG_KEY, TAG_VALUE = "Software", "mambaseg predict"
#: suffixes of predict's outputs other than masks (never inputs)
_OTHER_OUTPUTS = ("_prob", "_overlay")
NAN_HINT = "pass --nan-policy zero to replace them by 0"
#: red tint strength of the overlay inside the mask
OVERLAY_ALPHA = 0.35
#: the channels a model sees of an image with so many samples per pixel (alpha dropped)
_SEEN = {1: 1, 2: 1, 3: 3, 4: 3}
#: suffixes of the files written per image
SUFFIXES = {"mask": "_mask.png", "prob": "_prob.png", "overlay": "_overlay.png"}


@dataclass(frozen=True)
class Item:
    """One input image: its path, its path relative to the input root, its ground-truth mask, and
    its group (the patient whose slices are post-processed together as one volume)."""

    path: Path
    rel: str
    truth: Path | None = None
    group: str = ""


def output_tag() -> dict[str, str]:
    """The PNG text chunks of every file predict writes."""
    return {TAG_KEY: f"{TAG_VALUE} {__version__}"}


# ----------------------------------------------------------------------------- finding inputs

def is_predicted(path: Path) -> bool:
    """Whether ``path`` was written by ``mambaseg predict``: its PNG text says so, or a predict
    ``summary.json`` in its folder or a folder above lists it."""
    if png_text(path).get(TAG_KEY, "").startswith(TAG_VALUE):
        return True
    path = Path(os.path.abspath(path))
    for folder in path.parents:
        if path.relative_to(folder).as_posix() in _listed_outputs(folder):
            return True
    return False


def _listed_outputs(folder: Path) -> frozenset[str]:
    """The files a predict ``summary.json`` in ``folder`` lists (empty for none or another
    kind of summary)."""
    summary = folder / "summary.json"
    try:
        st = summary.stat()
    except OSError:
        return frozenset()
    return _read_listed(summary, st.st_mtime_ns, st.st_size)


@lru_cache(maxsize=256)
def _read_listed(summary: Path, mtime_ns: int, size: int) -> frozenset[str]:
    try:
        s = json.loads(summary.read_text(encoding="utf-8"))
        return frozenset(str(rec[k]) for rec in s["images"] for k in ("mask", "prob", "overlay")
                         if k in rec)
    except (OSError, ValueError, KeyError, TypeError):
        return frozenset()


def _truth(mask: Path | None, image: Path, warnings: list[str]) -> Path | None:
    if mask is not None and is_predicted(mask):
        warnings.append(f"{mask}: written by mambaseg predict, not taken as the ground truth "
                        f"of {image.name}")
        return None
    return mask


def _truth_beside(image: Path, warnings: list[str]) -> Path | None:
    for suffix in MASK_SUFFIXES:
        for cand in (image.with_name(f"{image.stem}_mask{suffix}"),
                     image.with_name(f"{image.stem}_mask{suffix.upper()}")):
            if cand.is_file():
                return _truth(cand, image, warnings)
    return None


def collect_inputs(path: str | Path) -> tuple[list[Item], list[str]]:
    """The images to segment under ``path`` and warnings about files left out.

    A file is taken as it is. A folder is searched recursively for images (hidden files,
    ``*_mask.*`` files and predict's own ``_prob`` / ``_overlay`` PNGs excluded; a
    ``<stem>_mask`` file beside an image is its ground truth unless predict wrote it), in
    (patient, slice) order; an item's ``group`` is its patient (``layout.scan``; a single file
    is its own). Raises DataError when ``path`` does not exist or holds no image.
    """
    path = Path(path)
    warnings: list[str] = []
    if not path.exists():
        raise DataError(f"input {path} does not exist")
    if path.is_file():
        return [Item(path, path.name, _truth_beside(path, warnings), path.name)], warnings
    found = scan(path)
    warnings += [f"{f}: {why}" for f, why in found.problems]
    items = []
    for s in found.slices:
        if s.image.stem.endswith(_OTHER_OUTPUTS) and is_predicted(s.image):
            warnings.append(f"{s.image}: written by mambaseg predict, not segmented")
            continue
        items.append(Item(s.image, s.image.relative_to(path).as_posix(),
                          _truth(s.mask, s.image, warnings), s.patient))
    if not items:
        raise DataError(f"no images found in {path} (looked for {', '.join(IMAGE_SUFFIXES)} "
                        "files, *_mask files excluded)")
    return items, warnings


def _inside(child: Path, parent: Path) -> bool:
    child, parent = child.resolve(), parent.resolve()
    return child == parent or parent in child.parents


def check_outdir(outdir: Path, input: Path, items: list[Item]) -> None:
    """Refuse an output folder inside the input folder or holding any input image: masks
    written there could be taken for ground truth (ground truth is only ever looked up beside
    the inputs, so never in the output folder)."""
    if input.is_dir() and _inside(outdir, input):
        raise MambasegError(f"output directory {outdir} is inside the input folder {input}; "
                            "predict never writes into its input: choose another -o")
    out = outdir.resolve()
    for folder in sorted({it.path.parent for it in items}):
        if _inside(folder, out):
            image = next(it.path for it in items if it.path.parent == folder)
            raise MambasegError(f"output directory {outdir} holds the input image {image}; "
                                "predict never writes its masks where they could be taken for "
                                "ground truth: choose another -o")


# ----------------------------------------------------------------------------- checking images

def check_pixels(path, net, h: int, w: int, rescale: bool, max_pixels: int) -> None:
    """DataError naming ``path`` when the model would run on more than ``max_pixels`` pixels."""
    ph, pw = forward_size(net, h, w, rescale)
    if ph * pw <= max_pixels:
        return
    gb = ph * pw * BYTES_PER_PIXEL / 1e9
    size = f"{pw} x {ph}" + ("" if (ph, pw) == (h, w) else f" (the {w} x {h} image "
                             + ("padded)" if not rescale else "resized and padded)"))
    how = "resize it, leave out --no-resize, or raise --max-pixels" if not rescale \
        else "resize it or raise --max-pixels"
    raise DataError(f"{path}: {size} would need about {gb:.1f} GB for the forward pass, more "
                    f"than --max-pixels {max_pixels} allows; {how}")


def model_channels(net) -> tuple[str, ...] | None:
    """The channel names ``net`` takes: those its (or its first ensemble member's) checkpoint
    config records (``data.channels.checkpoint_channels``); None for a model of another
    channel count that records none."""
    members = getattr(net, "members", None) or [net]
    n = int(getattr(net, "in_channels", None) or getattr(members[0], "in_channels", 3))
    return checkpoint_channels(getattr(members[0], "checkpoint_config", None), n)


def input_channels(net) -> int | str:
    """What the images of ``net`` are read as (``image_for``): the channel choice its channel
    names make (``"all"``, ``"flair"``: ``data.channels``), else its channel count."""
    choice = choice_of(model_channels(net))
    if choice is not None:
        return choice
    members = getattr(net, "members", None) or [net]
    return int(getattr(net, "in_channels", None) or getattr(members[0], "in_channels", 3))


def image_for(arr: np.ndarray, path, channels: int | str, nan_policy: str = "error"
              ) -> tuple[np.ndarray, str | None]:
    """A decoded image as the model's input (H, W, C) uint8 and its conversion note.

    ``channels``: a count (``io.image_from_array`` converts) or a channel choice: the LGG
    channels it names, taken from an RGB image; a grayscale image given to a one-channel
    choice (``"flair"``) is taken as that channel."""
    if not isinstance(channels, str):
        return image_from_array(arr, path, channels, nan_policy=nan_policy)
    keep = len(CHOICES[channels])
    if keep == 1 and (arr.ndim == 2 or arr.ndim == 3 and arr.shape[2] in (1, 2)):
        return image_from_array(arr, path, 1, nan_policy=nan_policy)
    img, note = image_from_array(arr, path, 3, nan_policy=nan_policy)
    return select_channels(img, channels), note


def array_channels(arr: np.ndarray) -> int | None:
    """The channels a decoded image gives a model: 1 (grayscale: a FLAIR slice) or 3 (colour:
    the LGG sequences), alpha aside; None for another shape (``image_for`` says why)."""
    return _SEEN.get(1 if arr.ndim == 2 else arr.shape[2] if arr.ndim == 3 else 0)


def file_channels(path: Path) -> int | None:
    """``array_channels`` of an image file from its header alone (nothing decoded); None when
    the header does not say."""
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            with tifffile.TiffFile(path) as tif:
                samples = int(tif.pages[0].samplesperpixel)
        else:
            with _warnings.catch_warnings():
                _warnings.simplefilter("ignore")  # Pillow's DecompressionBombWarning
                with Image.open(path) as im:
                    colour = im.mode in ("P", "CMYK", "LAB") or im.mode.startswith("YCbCr")
                    samples = 3 if colour else len(im.getbands())  # io.decode makes them RGB
    except Exception:  # noqa: BLE001 - load_image says what is wrong with the file
        return None
    return _SEEN.get(samples)


def slice_channels(where, labelled: Iterable[tuple[object, int | None]]) -> tuple[int, str]:
    """For choosing the shipped model: the channel count of images given as ``(label, count)``
    (``file_channels`` / ``array_channels``; unknown ones go with the others, RGB when all are)
    and a label naming those images. DataError naming ``where`` when grayscale and RGB mix."""
    by_count: dict[int | None, list[str]] = {}
    for label, count in labelled:
        by_count.setdefault(count, []).append(str(label))
    if 1 in by_count and 3 in by_count:
        gray, rgb = by_count[1], by_count[3]
        raise DataError(f"{where}: mixes {len(gray)} grayscale slice(s) (FLAIR, e.g. {gray[0]}) "
                        f"and {len(rgb)} RGB slice(s) (e.g. {rgb[0]}); with no --model or "
                        "--checkpoint each kind needs its own shipped model: segment them in "
                        "separate runs, or name one model for all")
    count = 1 if 1 in by_count else 3
    these = by_count.get(count) or [str(where)]
    more = f" and {len(these) - 1} more slice(s) like it" if len(these) > 1 else ""
    return count, these[0] + more


def load_image(item: Item, channels: int | str, net, rescale: bool = True,
               max_pixels: int = MAX_PIXELS, nan_policy: str = "error"
               ) -> tuple[np.ndarray, str | None]:
    """``(image, note)`` of an input, checked: its size from the header before decoding
    (``check_pixels``), then one finite 2-D slice, as ``image_for(..., channels)`` makes it.
    DataError naming the file otherwise."""
    hw = image_size(item.path)
    if hw is not None:
        check_pixels(item.path, net, *hw, rescale, max_pixels)
    try:
        img, note = image_for(decode(item.path), item.path, channels, nan_policy)
    except NonFiniteError as exc:
        raise DataError(f"{exc}; {NAN_HINT}") from None
    if hw is None:
        check_pixels(item.path, net, *img.shape[:2], rescale, max_pixels)
    return img, note


def batch_limit(net, shape, batch_size: int, rescale: bool, max_pixels: int) -> int:
    """Images of ``shape`` (H, W, C) per forward pass: ``batch_size``, fewer when that many
    would run on more than ``max_pixels`` pixels together (at least one)."""
    ph, pw = forward_size(net, shape[0], shape[1], rescale)
    return max(1, min(int(batch_size), int(max_pixels) // max(1, ph * pw)))


# ----------------------------------------------------------------------------- outputs

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


def output_paths(outdir: Path, rel: str, probabilities: bool = False,
                 overlay: bool = False) -> dict[str, Path]:
    """The files written for the input ``rel``: keys ``mask`` and optionally ``prob``, ``overlay``."""
    stem = rel.rsplit(".", 1)[0] if "." in rel.rsplit("/", 1)[-1] else rel
    kinds = ["mask"] + (["prob"] if probabilities else []) + (["overlay"] if overlay else [])
    return {k: outdir / (stem + SUFFIXES[k]) for k in kinds}


def check_targets(outdir: Path, targets: dict[str, dict[str, Path]], overwrite: bool) -> None:
    """No two inputs write one file, and (unless ``overwrite``) no output exists yet."""
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


def reason(exc: Exception, path: Path) -> str:
    """An error's message without its leading ``PATH: ``."""
    msg = str(exc)
    prefix = f"{path}: "
    return msg[len(prefix):] if msg.startswith(prefix) else msg


def units(items: Sequence[Item], size: int, by_group: bool):
    """Consecutive items predicted together: about ``size`` of them, cut only between groups
    (patients) when ``by_group`` so that each patient's masks are post-processed together."""
    unit: list[Item] = []
    for item in items:
        if len(unit) >= size and (not by_group or item.group != unit[-1].group):
            yield unit
            unit = []
        unit.append(item)
    if unit:
        yield unit


def prepare_outputs(items: Sequence[Item], outdir: Path, load_one, probabilities: bool,
                    overlay: bool, overwrite: bool) -> tuple[dict, dict]:
    """Before anything is written: ``ready`` (a single input, loaded with ``load_one(item)``,
    so that one that cannot be segmented is an error with nothing written) and ``targets``
    (every output path, checked by ``check_targets``); then ``outdir`` is created."""
    ready = {items[0].rel: load_one(items[0])} if len(items) == 1 else {}
    targets = {it.rel: output_paths(outdir, it.rel, probabilities, overlay) for it in items}
    check_targets(outdir, targets, overwrite)
    prepare_dir(outdir)
    return ready, targets


def segment_items(items: Sequence[Item], outdir: Path, load_one, probs_of, threshold: float,
                  pp, batch_size: int, ready: dict, targets: dict, res: "PredictResult",
                  bar) -> None:
    """Segment ``items`` unit by unit (``units``): ``load_one(item) -> (image, note)`` (inputs
    failing with DataError go to ``res.skipped``), ``probs_of(images)`` the probabilities,
    thresholded, post-processed per patient by ``pp``, written (``write_outputs``) and recorded
    in ``res.written``; ``bar`` is advanced per image and closed."""
    for unit in units(items, max(1, int(batch_size)), by_group=pp.active):
        loaded = []
        for item in unit:
            try:
                img, note = ready.pop(item.rel) if item.rel in ready else load_one(item)
            except DataError as exc:
                res.skipped.append({"input": item.rel, "reason": reason(exc, item.path)})
                bar.update(1)
                continue
            loaded.append((item, img, note))
        probs = probs_of([img for _, img, _ in loaded])
        raw = [prob > threshold for prob in probs]
        masks = postprocess_masks(raw, [it.group for it, _, _ in loaded], pp)
        for (item, img, note), prob, mask, before in zip(loaded, probs, masks, raw):
            write_outputs(targets[item.rel], img, prob, mask)
            rec = record(item, outdir, targets[item.rel], mask, note)
            if pp.active:
                rec["removed_pixels"] = int(before.sum()) - int(mask.sum())
            res.written.append(rec)
            bar.update(1)
    bar.close()


# ----------------------------------------------------------------------------- records

def record(item: Item, outdir: Path, paths: dict[str, Path], mask: np.ndarray,
            note: str | None) -> dict:
    """The summary.json entry of one written mask; with a ground truth beside the input, its
    counts and Dice (or why it could not be read)."""
    rec = {"input": item.rel, "mask": paths["mask"].relative_to(outdir).as_posix(),
           "tumour_pixels": int(mask.sum()), "notes": note,
           "size": [int(mask.shape[0]), int(mask.shape[1])]}
    for k in ("prob", "overlay"):
        if k in paths:
            rec[k] = paths[k].relative_to(outdir).as_posix()
    if item.truth is None:
        return rec
    rec["truth"] = item.truth.name
    try:
        truth = read_mask(item.truth)
    except DataError as exc:
        rec["truth_error"] = reason(exc, item.truth)
        return rec
    if truth.shape != mask.shape:
        rec["truth_error"] = f"mask size {truth.shape} differs from image size {mask.shape}"
        return rec
    m, t = mask.astype(bool), truth.astype(bool)
    tp, fp, fn = int((m & t).sum()), int((m & ~t).sum()), int((~m & t).sum())
    rec.update(truth_pixels=tp + fn, tp=tp, fp=fp, fn=fn, dice=float(dice_from_counts(tp, fp, fn)))
    return rec


def dice_of(records: Sequence[dict]) -> dict | None:
    """Pooled and per-slice-mean Dice over the records scored against a ground truth."""
    scored = [r for r in records if "dice" in r]
    if not scored:
        return None
    tp, fp, fn = (np.array([r[k] for r in scored]) for k in ("tp", "fp", "fn"))
    return {"pooled": float(dice_from_counts(tp.sum(), fp.sum(), fn.sum())),
            "slice_mean": float(dice_from_counts(tp, fp, fn).mean()),
            "n": len(scored), "n_tumour": int(((tp + fn) > 0).sum()),
            "tp": int(tp.sum()), "fp": int(fp.sum()), "fn": int(fn.sum())}


def write_outputs(paths: dict[str, Path], image: np.ndarray, prob: np.ndarray,
                  mask: np.ndarray) -> None:
    """Write one image's mask, and its probability map and overlay where ``paths`` asks for
    them, each tagged as a prediction (never taken for ground truth or an input)."""
    tag = output_tag()
    write_png(paths["mask"], mask.astype(np.uint8) * 255, text=tag)
    if "prob" in paths:
        write_png(paths["prob"], np.clip(np.rint(prob * 255.0), 0, 255).astype(np.uint8),
                  text=tag)
    if "overlay" in paths:
        write_png(paths["overlay"], overlay_image(image, mask), text=tag)


def result_fields(res: "PredictResult", seconds: float) -> dict:
    """The keys every predict ``summary.json`` ends with: counts, Dice, the per-image records,
    skipped inputs, warnings, time and version."""
    records = res.written
    return {
        "counts": {"inputs": len(records) + len(res.skipped), "written": len(records),
                   "skipped": len(res.skipped),
                   "converted": sum(1 for r in records if r["notes"]),
                   "with_truth": sum(1 for r in records if "dice" in r)},
        "dice": dice_of(records),
        "images": records, "skipped": res.skipped, "warnings": res.warnings,
        "seconds": round(seconds, 3), "mambaseg_version": __version__,
    }


def overlay_image(image: np.ndarray, mask: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """RGB uint8 (H, W, 3): ``image`` with ``mask`` tinted red and its contour (mask pixels with
    a 4-neighbour outside it, as ``metrics.boundary``) in pure red."""
    img = np.asarray(image)
    if img.ndim == 2:
        img = img[:, :, None]
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    out = img[:, :, :3].astype(np.float32)
    m = np.asarray(mask) > 0
    red = np.array([255.0, 0.0, 0.0], np.float32)
    out[m] = (1 - alpha) * out[m] + alpha * red
    p = np.pad(m, 1)
    inner = p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    out[m & ~inner] = red
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
