"""Evaluating a model on one part of a split: run it, count, and assemble ``summary.json``.

``evaluate_slices`` runs a model over slices (a few whole patients at a time, so memory stays
bounded and post-processing sees each patient's stack) and returns the metrics plus per-slice and
per-patient tables; ``run_evaluation`` is what ``mambaseg evaluate`` calls: it loads the
checkpoint(s) (several: an ensemble averaging their probabilities) and the split, checks the
outputs can be written, evaluates, and writes ``summary.json`` (and ``predictions.npz``)
atomically.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mambaseg import metrics
from mambaseg._version import __version__
from mambaseg.data.dataset import load_arrays
from mambaseg.data.io import NonFiniteError
from mambaseg.data.splits import resolve_split
from mambaseg.device import resolve_device
from mambaseg.errors import DataError, MambasegError
from mambaseg.files import prepare_dir, write_json
from mambaseg.inference.ensemble import Ensemble
from mambaseg.inference.loading import checkpoint_list, load_model, source_label
from mambaseg.inference.model_info import model_name
from mambaseg.inference.postprocess import PostProcess, resolve_postprocess
from mambaseg.inference.predict_inputs import input_channels
from mambaseg.inference.predictions import predictions_path, write_predictions
from mambaseg.inference.runner import predict_probs
from mambaseg.models import count_parameters
from mambaseg.progress import progress_bar

#: top-level metric keys of summary.json, in the order tables print them (the summary also
#: holds ``hd95_pooled``, medpy's HD95, beside ``hd95``: docs/metrics.md)
METRIC_KEYS = ("dice_paper", "dice_slice", "dice_patient", "dice_global", "iou", "precision",
               "recall", "hd95", "fpr_empty")


@dataclass
class Evaluation:
    """What ``evaluate_slices`` returns: the summary dict and, if kept, the binary predictions."""

    summary: dict
    rels: list[str] = field(default_factory=list)
    packed: np.ndarray | None = None   # np.packbits of uint8 (N, H, W) along the last axis
    shape: tuple[int, int, int] | None = None


def evaluate_slices(model, slices, batch_size: int = 16, device: str | torch.device = "cpu",
                    threshold: float = 0.5, amp: bool = False, keep_predictions: bool = False,
                    n_boot: int = metrics.N_BOOT, seed: int = metrics.BOOT_SEED,
                    progress: bool = False, postprocess: PostProcess | None = None,
                    nan_policy: str = "error") -> Evaluation:
    """Run ``model`` over ``slices`` (``layout.Slice`` with masks, in split order) and compute
    every metric of docs/metrics.md.

    Slices are run a few patients at a time (a patient is never split, so ``postprocess`` sees
    each patient's whole stack; memory stays bounded). With an active ``postprocess`` the
    binary predictions are post-processed per patient before counting, and
    ``summary["without_postprocess"]`` holds the Dice and fpr_empty of the raw predictions.

    Returns an :class:`Evaluation` whose ``summary`` holds one key per metric name, the
    post-processing applied, and ``per_slice`` ({rel, patient, tp, fp, fn, dice, hd95,
    hd95_pooled}) and ``per_patient`` ({patient, tp, fp, fn, dice, slices}) tables (``hd95``:
    MONAI's definition, ``hd95_pooled``: medpy's). An image with NaN/Inf pixels
    is a DataError naming it, or with ``nan_policy="zero"`` its pixels become 0 and
    ``summary["nan_replaced"]`` lists it.
    """
    slices = list(slices)
    notes: dict[str, str] = {}
    if not slices:
        raise DataError("no slices to evaluate")
    pp = postprocess or PostProcess()
    raw, counts = np.zeros((3, len(slices)), np.int64), np.zeros((3, len(slices)), np.int64)
    hds: list[float | None] = [None] * len(slices)
    hdp: list[float | None] = [None] * len(slices)   # medpy's pooled HD95
    packed: list[np.ndarray | None] = [None] * len(slices)
    bar = progress_bar(len(slices), "evaluate", progress, unit="slice")
    for rows in patient_units(slices, max(1, int(batch_size)) * 4):
        part = [slices[i] for i in rows]
        pred, truth = _predict_part(model, part, batch_size, device, threshold, amp,
                                    nan_policy, notes)
        raw[:, rows] = metrics.dice_counts(pred, truth)
        if pp.active:
            pred = pp(pred, [s.patient for s in part])
        counts[:, rows] = metrics.dice_counts(pred, truth)
        for j, i in enumerate(rows):
            hds[i], hdp[i] = metrics.hd95_both(pred[j], truth[j])
            if keep_predictions:
                packed[i] = np.packbits(pred[j].astype(np.uint8), axis=-1)
        bar.update(len(part))
    bar.close()
    tp, fp, fn = counts
    patients = [s.patient for s in slices]
    summary = metrics.summarize(tp, fp, fn, patients, hds, n_boot=n_boot, seed=seed,
                                hd_pooled=hdp)
    if notes:
        summary["nan_replaced"] = dict(sorted(notes.items()))
    summary["postprocess"] = pp.to_dict()
    summary["postprocess_description"] = pp.describe()
    if pp.active:
        summary["without_postprocess"] = _raw_metrics(*raw, patients, n_boot, seed)
    summary["per_slice"] = per_slice_table(slices, tp, fp, fn, hds, hdp)
    summary["per_patient"] = per_patient_table(tp, fp, fn, patients)
    ev = Evaluation(summary, [s.rel for s in slices])
    if keep_predictions:
        if len({p.shape for p in packed}) != 1:
            raise DataError("--save-predictions needs slices of one size")
        ev.packed = np.stack(packed)
        ev.shape = (len(slices), *pred.shape[1:])
    return ev


def patient_units(slices, size: int) -> list[list[int]]:
    """Indices of ``slices`` in units of whole patients (in order of first appearance), each
    unit gathering patients until it holds at least ``size`` slices."""
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(slices):
        groups.setdefault(s.patient, []).append(i)
    units, unit = [], []
    for rows in groups.values():
        unit = unit + rows
        if len(unit) >= size:
            units.append(unit)
            unit = []
    return units + ([unit] if unit else [])


def _predict_part(model, part, batch_size, device, threshold, amp, nan_policy="error",
                  notes=None) -> tuple[np.ndarray, np.ndarray]:
    """Binary predictions and truths, bool (N, H, W), of the slices ``part``."""
    try:
        images, masks = load_arrays(part, progress=False, channels=input_channels(model),
                                    nan_policy=nan_policy, notes=notes)
    except NonFiniteError as exc:
        raise DataError(f"{exc}; fix or remove the file ('mambaseg data verify' lists every "
                        "one), or pass --nan-policy zero to replace them by 0") from None
    probs = predict_probs(model, images, batch_size=batch_size, device=device, amp=amp)
    return (probs > threshold)[:, 0].numpy(), masks[:, 0].numpy() > 0


def _raw_metrics(tp, fp, fn, patients, n_boot, seed) -> dict:
    """The Dice scores and fpr_empty of predictions before post-processing."""
    return {"dice_patient": metrics.dice_patient(tp, fp, fn, patients, n_boot, seed),
            "dice_global": metrics.global_scores(tp, fp, fn)["dice_global"],
            "dice_slice": metrics.dice_slice(tp, fp, fn),
            "fpr_empty": metrics.fpr_empty(tp, fp, fn)}


def per_slice_table(slices, tp, fp, fn, hds, hds_pooled) -> list[dict]:
    dice = metrics.dice_from_counts(tp, fp, fn)
    return [{"rel": s.rel, "patient": s.patient, "tp": int(a), "fp": int(b), "fn": int(c),
             "dice": float(d), "hd95": h, "hd95_pooled": hp}
            for s, a, b, c, d, h, hp in zip(slices, tp, fp, fn, dice, hds, hds_pooled)]


def per_patient_table(tp, fp, fn, patients) -> list[dict]:
    names, ptp, pfp, pfn, n = metrics.group_counts(tp, fp, fn, patients)
    dice = metrics.dice_from_counts(ptp, pfp, pfn)
    return [{"patient": p, "tp": int(a), "fp": int(b), "fn": int(c), "dice": float(d),
             "slices": int(k)} for p, a, b, c, d, k in zip(names, ptp, pfp, pfn, dice, n)]


# ----------------------------------------------------------------------------- outputs

def default_out(checkpoint: str | Path, part: str = "test") -> Path:
    """``<checkpoint>/summary.json`` for the test part, ``<checkpoint>/summary-<part>.json`` else."""
    name = "summary.json" if part == "test" else f"summary-{part}.json"
    return Path(checkpoint) / name


# ----------------------------------------------------------------------------- the command

def run_settings(checkpoint: str | Path | None) -> dict:
    """Data and split settings of the training run a checkpoint came from.

    A trainer checkpoint lives in ``RUN_DIR/last`` or ``RUN_DIR/best`` beside the run's
    ``config.json``; its ``data``, ``split``, ``split_seed`` and ``fold`` are returned (as
    ``data``, ``split``, ``seed``, ``fold``; missing ones left out). Empty when not found.
    """
    if checkpoint is None:
        return {}
    path = Path(checkpoint).parent / "config.json"
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(cfg, dict) or "model_name" in cfg:   # a checkpoint's own config
        return {}
    cfg = cfg.get("settings", cfg) if isinstance(cfg.get("settings"), dict) else cfg
    out = {"data": cfg.get("data"), "split": cfg.get("split"), "seed": cfg.get("split_seed"),
           "fold": cfg.get("fold")}
    return {k: v for k, v in out.items() if v is not None}


def run_evaluation(data: str | Path | None, checkpoint=None,
                   model: str | None = None, split: str | None = None, part: str = "test",
                   out: str | Path | None = None,
                   device: str = "auto", batch_size: int = 16, threshold: float = 0.5,
                   save_predictions: bool = False, overwrite: bool = False,
                   seed: int | None = None, fold: int | None = None, amp: bool = False,
                   n_boot: int = metrics.N_BOOT, progress: bool = False,
                   postprocess="auto", nan_policy: str = "error") -> tuple[dict, Path]:
    """Evaluate a checkpoint (or the shipped weights of ``model``) on ``part`` of ``split`` of
    the dataset at ``data``; write the summary (default ``default_out(checkpoint, part)``).

    ``checkpoint``: a directory (a checkpoint or an ensemble folder) or a list of them (the mean
    of their probabilities; the first gives the default output and the run settings).
    ``data``, ``split``, ``seed`` and ``fold`` left None come from the training run of the
    (first) checkpoint (``run_settings``); ``split`` then defaults to ``paper``.
    ``postprocess``: ``"auto"`` (the checkpoint's recommended post-processing, if any), None
    (none) or a PostProcess (see ``postprocess.resolve_postprocess``).

    Every check (paths, split, device, checkpoint, existing outputs, writable folder) runs before
    the model does; nothing is written unless the evaluation succeeds. Returns (summary, path).
    """
    if (checkpoint is None) == (model is None):
        raise MambasegError("pass exactly one of --checkpoint DIR and --model NAME")
    ckpts = checkpoint_list(checkpoint) if checkpoint is not None else []
    first = ckpts[0] if ckpts else None
    if out is None:
        if first is None:
            raise MambasegError("--model needs -o/--output FILE (where to write the summary)")
        out = default_out(first, part)
    out = Path(out)
    _check_outputs(out, save_predictions, overwrite)
    run = run_settings(first)
    if split is None:
        split = run.get("split", "paper")
        seed = run.get("seed") if seed is None else seed
        fold = run.get("fold") if fold is None else fold
    if data is None:
        if "data" not in run:
            raise MambasegError("pass --data PATH (the dataset folder)")
        data = run["data"]
    data = Path(data)
    if not data.exists():
        raise DataError(f"data path {data} does not exist")
    dev = resolve_device(device)
    parts = resolve_split(data, split, seed=seed, fold=fold)
    if part not in parts:
        raise MambasegError(f"unknown part {part!r}: choose one of {', '.join(parts)}")
    slices = parts[part]
    if not slices:
        raise DataError(f"the {part} part of split {split!r} is empty")
    net = load_model(model, ckpts or None, dev)
    pp, pp_source = resolve_postprocess(postprocess, net)
    prepare_dir(out.parent, "output folder")

    t0 = time.perf_counter()
    ev = evaluate_slices(net, slices, batch_size=batch_size, device=dev, threshold=threshold,
                         amp=amp, keep_predictions=save_predictions, n_boot=n_boot,
                         progress=progress, postprocess=pp, nan_policy=nan_policy)
    head = {
        "model": model_name(net), "parameters": count_parameters(net),
        "checkpoint": source_label(model, ckpts or None, net),
        **({"checkpoints": [str(c) for c in ckpts]} if ckpts else {}),
        **({"ensemble_members": len(net.members)} if isinstance(net, Ensemble) else {}),
        "data": str(data), "split": str(split), "seed": seed, "fold": fold, "part": part,
        "n_slices": len(slices), "n_patients": len({s.patient for s in slices}),
        "threshold": threshold, "device": str(dev), "amp": amp,
        # inference resizes slices to this size (the training scale) and back; see runner.py
        "model_input_size": getattr(net, "input_size", None),
        "postprocess_source": pp_source,
        "seconds": round(time.perf_counter() - t0, 3), "mambaseg_version": __version__,
    }
    summary = {**head, **ev.summary}
    if save_predictions:
        summary["predictions"] = predictions_path(out).name
        write_predictions(predictions_path(out), ev.rels, ev.packed, ev.shape)
    write_json(out, summary, indent=1)
    return summary, out


def _check_outputs(out: Path, save_predictions: bool, overwrite: bool) -> None:
    """Refuse existing outputs (unless ``overwrite``) and a folder given as ``--output``."""
    targets = [out] + ([predictions_path(out)] if save_predictions else [])
    existing = [str(p) for p in targets if p.exists()]
    if existing and not overwrite:
        what = " and ".join(existing) + (" already exist" if len(existing) > 1 else " already exists")
        raise MambasegError(f"{what}; pass --overwrite to replace, or -o/--output FILE to write elsewhere")
    if out.exists() and out.is_dir():
        raise MambasegError(f"--output {out} is a directory; give a file name such as {out}/summary.json")
