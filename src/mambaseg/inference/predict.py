"""Segmenting image files or arrays: ``run_predict`` (the ``mambaseg predict`` command) and
``segment`` (the Python API, exported as ``mambaseg.segment``).

For each input image ``<rel>.<ext>`` (``rel`` relative to the input folder, or the file name),
``run_predict`` writes ``OUTDIR/<rel>_mask.png`` (uint8 0/255, the input's size) and optionally
``<rel>_prob.png`` (probability x 255) and ``<rel>_overlay.png`` (the image, mask tinted red
with a red contour), then ``OUTDIR/summary.json``. Every output path is checked before anything
is written, and every write is atomic.

Post-processing (``inference.postprocess``; by default the checkpoint's recommended one) treats
the slices of one patient as one volume: inputs come in (patient, slice) order, a patient being
an image's folder (a loose image is its own patient), and all slices of a patient are predicted
before they are post-processed and written. Probability maps are written as predicted.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch

from mambaseg.data.io import NAN_POLICIES, decode
from mambaseg.data.nifti import holds_volumes
from mambaseg.device import resolve_device
from mambaseg.errors import MambasegError
from mambaseg.files import write_json
from mambaseg.inference.ensemble import Ensemble
from mambaseg.inference.loading import (checkpoint_list, load_model, load_shipped_model,
                                        source_label)
from mambaseg.inference.model_info import model_name
from mambaseg.inference.postprocess import PostProcess, postprocess_masks, resolve_postprocess
from mambaseg.inference.predict_inputs import (MAX_PIXELS, PredictResult, array_channels,
                                               check_outdir, collect_inputs, file_channels,
                                               image_for, input_channels, load_image,
                                               model_channels, prepare_outputs, result_fields,
                                               segment_items, slice_channels)
from mambaseg.inference.runner import image_probs, predict_probs
from mambaseg.inference.volumes import run_predict_volumes
from mambaseg.models import pretrained
from mambaseg.progress import progress_bar

#: a progress bar is shown for more inputs than this
PROGRESS_MIN = 5


# ----------------------------------------------------------------------------- the model

def slice_model(model, checkpoint, where, labelled, device) -> tuple[object, str]:
    """The model for slice images and its label: the one given (``load_model``), else the
    shipped one for their channel count (``pretrained.shipped_for``: a grayscale slice is a
    FLAIR slice; ``labelled``: ``(label, channels)`` per image, ``slice_channels``)."""
    if model is not None or checkpoint is not None:
        net = load_model(model, checkpoint, device)
        return net, source_label(model, checkpoint, net)
    name = pretrained.shipped_for(*slice_channels(where, labelled), "slice")
    return load_shipped_model(name, device), f"shipped:{name}"


# ----------------------------------------------------------------------------- the command

def run_predict(input: str | Path, outdir: str | Path, model=None,
                checkpoint=None, threshold: float = 0.5,
                probabilities: bool = False, overlay: bool = False, device: str = "auto",
                batch_size: int = 8, overwrite: bool = False, amp: bool = False,
                progress: bool = False, rescale: bool = True,
                postprocess="auto", nan_policy: str = "error",
                max_pixels: int = MAX_PIXELS) -> PredictResult:
    """Segment every image of ``input`` (a file or a folder) into ``outdir``; NIfTI volumes
    (a .nii / .nii.gz file, or a folder holding them) go to ``inference.volumes``.

    Images are resized to the scale the model was trained at and the masks back to each image's
    size (``rescale=False``: zero padding only; see ``mambaseg.inference.runner``).
    ``checkpoint``: a directory, an ensemble folder, or a list of directories (an ensemble).
    ``postprocess``: ``"auto"`` (the checkpoint's recommended post-processing, if any), None or
    a PostProcess; it is applied to each patient's masks together (see the module docstring).

    Checks, in order and before writing anything: the input exists and holds images, ``outdir``
    is not inside an input folder and holds no input image (``predict_inputs.check_outdir``),
    the device, the model, that no output exists (unless ``overwrite``) and that ``outdir`` is
    writable. An image that cannot be segmented (unreadable, several pages or frames, NaN/Inf
    pixels unless ``nan_policy="zero"``, more than ``max_pixels`` pixels at the model's input:
    ``predict_inputs.load_image``) is skipped and reported; when it is the only input, its
    DataError is raised instead and nothing is written. Where ground-truth masks sit beside the
    images (not written by predict), the Dice against them is computed too.
    """
    input, outdir = Path(input), Path(outdir)
    if nan_policy not in NAN_POLICIES:
        raise MambasegError(f"nan_policy must be one of {', '.join(NAN_POLICIES)}, "
                            f"got {nan_policy!r}")
    if int(max_pixels) < 1:
        raise MambasegError(f"--max-pixels must be at least 1, got {max_pixels}")
    if holds_volumes(input):  # NIfTI: inference.volumes
        return run_predict_volumes(input, outdir, model, checkpoint, threshold, probabilities,
                                   overlay, device, batch_size, overwrite, amp, progress,
                                   rescale, postprocess, nan_policy, max_pixels)
    items, warnings = collect_inputs(input)
    check_outdir(outdir, input, items)
    dev = resolve_device(device)
    net, label = slice_model(model, checkpoint, input,
                             ((it.path, file_channels(it.path)) for it in items), dev)
    pp, pp_source = resolve_postprocess(postprocess, net)
    load = {"channels": input_channels(net), "net": net, "rescale": rescale,
            "max_pixels": int(max_pixels), "nan_policy": nan_policy}
    # a single input that cannot be segmented is an error (exit 2), with nothing written
    ready, targets = prepare_outputs(items, outdir, lambda it: load_image(it, **load),
                                     probabilities, overlay, overwrite)

    t0 = time.perf_counter()
    res = PredictResult({}, outdir, warnings=warnings)
    bar = progress_bar(len(items), "predict", progress and len(items) > PROGRESS_MIN,
                       unit="image")
    segment_items(items, outdir, lambda it: load_image(it, **load),
                  lambda imgs: image_probs(net, imgs, batch_size, dev, amp, rescale,
                                           int(max_pixels)),
                  threshold, pp, batch_size, ready, targets, res, bar)

    res.summary = _summary(input, outdir, net, label, checkpoint, threshold, dev,
                           res, time.perf_counter() - t0, rescale)
    res.summary.update(_pp_summary(pp, pp_source, res.written))
    res.summary.update(nan_policy=nan_policy, max_pixels=int(max_pixels))
    write_json(outdir / "summary.json", res.summary, indent=1)
    return res


def _pp_summary(pp: PostProcess, source: str, records: list[dict]) -> dict:
    return {"postprocess": pp.to_dict(), "postprocess_description": pp.describe(),
            "postprocess_source": source,
            "postprocess_removed_pixels": sum(r.get("removed_pixels", 0) for r in records)}


def _summary(input, outdir, net, label, checkpoint, threshold, dev, res,
             seconds, rescale) -> dict:
    return {
        "input": str(input), "output": str(outdir), "model": model_name(net),
        "checkpoint": label,
        **({"checkpoints": [str(c) for c in checkpoint_list(checkpoint)]}
           if checkpoint is not None else {}),
        **({"ensemble_members": len(net.members)} if isinstance(net, Ensemble) else {}),
        "threshold": threshold,
        "channels": list(model_channels(net) or []) or None,
        "device": str(dev),
        "model_input_size": getattr(net, "input_size", None), "rescale": bool(rescale),
        **result_fields(res, seconds),
    }


# ----------------------------------------------------------------------------- Python API

def _as_array(x, label: str) -> tuple[np.ndarray, str]:
    """A path, array or tensor as ``(decoded array, label)``; float [0, 1] scaled to 0-255."""
    if isinstance(x, (str, os.PathLike)):
        return decode(x), str(x)
    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if arr.dtype.kind == "f" and arr.size and 0.0 <= arr.min() and arr.max() <= 1.0:
        arr = np.clip(np.rint(arr * 255.0), 0, 255).astype(np.uint8)  # float [0, 1] as is
    return arr, label


def segment(images_or_paths, model=None, threshold: float = 0.5, device: str = "auto",
            batch_size: int = 8, return_probs: bool = False, rescale: bool = True,
            postprocess: PostProcess | dict | None = None):
    """Segment images: returns uint8 (H, W) masks in {0, 1}, one per input (each the input's size).

    ``images_or_paths``: a path, an (H, W) / (H, W, C) array (uint8, or float in [0, 1]), or a
    list of those; a single input gives a single mask. ``model``: None (the shipped model for
    the inputs' channels: RGB, the default; grayscale, a FLAIR slice, the FLAIR-only one; a
    DataError when that is not shipped or grayscale and RGB are mixed), a model name (its
    shipped weights), a checkpoint directory or ensemble folder, or a loaded model.
    ``return_probs=True`` returns float32 probabilities instead of masks; ``rescale=False``
    runs the model at each image's own scale (zero padding only) instead of its training
    scale. ``postprocess`` (a PostProcess; None: none) is applied to the masks of
    all inputs as one patient's slices, in the order given; unlike ``mambaseg predict``, which
    groups slices by patient and applies the model's recommended post-processing, ``segment``
    cannot know that its inputs are one patient, so it applies none unless asked.
    """
    single = isinstance(images_or_paths, (str, os.PathLike, np.ndarray, torch.Tensor))
    inputs = [images_or_paths] if single else list(images_or_paths)
    if isinstance(postprocess, dict):
        postprocess = PostProcess.from_dict(postprocess)
    if return_probs and postprocess is not None and postprocess.active:
        raise MambasegError("post-processing applies to masks: not with return_probs=True")
    dev = resolve_device(device)
    arrays = [_as_array(x, "<array>" if single else f"<array {i}>")
              for i, x in enumerate(inputs)]
    net, _ = slice_model(model, None, "segment()",
                         ((label, array_channels(a)) for a, label in arrays), dev)
    channels = input_channels(net)
    outs = []
    for arr, label in arrays:
        img, _ = image_for(arr, label, channels)
        batch = torch.from_numpy(img).permute(2, 0, 1)[None]
        prob = predict_probs(net, batch, batch_size=batch_size, device=dev,
                             rescale=rescale)[0, 0].numpy()
        outs.append(prob if return_probs else prob > threshold)
    if not return_probs:
        outs = [m.astype(np.uint8) for m in
                postprocess_masks(outs, ["segment"] * len(outs), postprocess)]
    return outs[0] if single else outs
