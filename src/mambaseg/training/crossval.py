"""Patient-level K-fold cross-validation: train and test every fold, then score the out-of-fold
(OOF) predictions of all patients as one result.

A cross-validation folder holds ``crossval.json`` (the settings), ``split.json`` (the K-fold
split, as ``mambaseg data split --folds K`` writes it), one training run per fold
(``fold_<i>/``, with the fold's test ``summary.json`` and ``predictions.npz``), and, once every
fold is done, ``summary.json`` and ``predictions.npz`` over all patients: each patient predicted
by the one fold model that never saw it. ``resume=True`` continues a killed run with the folds
still to do (a fold interrupted mid-training resumes from its ``last/`` checkpoint).

The out-of-fold result (``write_oof_summary``) gathers the folds' saved test predictions
(nothing is re-run), scores them raw and under each post-processing candidate
(:data:`CANDIDATES`), and writes ``summary.json`` (the keys of ``evaluate``'s summary, for the
post-processing that gives the highest OOF mean per-patient Dice, plus ``folds``,
``postprocess``, ``postprocess_variants`` and ``without_postprocess``) and ``predictions.npz``
(the raw OOF masks, packed bits).
"""
from __future__ import annotations

import dataclasses
import gc
import json
import multiprocessing
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from mambaseg import metrics
from mambaseg._version import __version__
from mambaseg.data.dataset import load_arrays
from mambaseg.data.layout import find_slices, slice_key
from mambaseg.data.splits import (PARTS, check_folds, load_split, make_split, resolve_split,
                                  save_split)
from mambaseg.errors import DataError, MambasegError
from mambaseg.files import write_json
from mambaseg.inference.evaluate import per_patient_table, per_slice_table, run_evaluation
from mambaseg.inference.postprocess import PostProcess, apply
from mambaseg.inference.predictions import load_predictions, write_predictions
from mambaseg.models import get_entry
from mambaseg.training.build import check_data_path
from mambaseg.training.config import TrainConfig, resolved_settings
from mambaseg.training.history import format_record, read_metrics
from mambaseg.training.train_state import has_train_state
from mambaseg.training.trainer import train

SETTINGS = "crossval.json"
SPLIT = "split.json"
SUMMARY = "summary.json"
PREDICTIONS = "predictions.npz"
#: what resuming may change; every other setting must match the saved cross-validation
RESUME_MAY_CHANGE = ("epochs", "device", "amp", "cuda_graphs", "channels_last", "progress",
                     "val_batch_size", "data")

Printer = Callable[[str], None]


def fold_dir(out: Path, fold: int) -> Path:
    return Path(out) / f"fold_{fold}"


def fold_done(out: Path, fold: int) -> bool:
    """A fold is done once its test summary and predictions are written."""
    d = fold_dir(out, fold)
    return (d / SUMMARY).is_file() and (d / PREDICTIONS).is_file()


# ----------------------------------------------------------------------------- setup

def _train_settings(cfg: TrainConfig) -> dict[str, Any]:
    keep = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(TrainConfig)}
    for key in ("out", "split", "fold", "resume", "overwrite", "progress"):
        keep.pop(key)
    keep["data"] = str(Path(keep["data"]).resolve()) if keep["data"] is not None else None
    return keep


def prepare(cfg: TrainConfig, out: Path, folds: int | None, resume: bool, overwrite: bool
            ) -> tuple[TrainConfig, dict]:
    """Check the folder, write (or, resuming, read and check) ``crossval.json`` and
    ``split.json``; returns the settings to train with and the split."""
    out = Path(out)
    saved = out / SETTINGS
    if resume:
        if not saved.is_file():
            raise MambasegError(f"--resume: {out} holds no cross-validation ({SETTINGS} missing)")
        cfg = _resumed(cfg, json.loads(saved.read_text()), out)
        return cfg, load_split(out / SPLIT)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise MambasegError(f"{out} is not empty; pass --resume to continue a cross-validation "
                            "there, --overwrite to start again, or choose another -o")
    if cfg.model is None or cfg.data is None:
        raise MambasegError("--model and --data are required (except with --resume)")
    root = check_data_path(cfg.data)
    get_entry(cfg.model)
    resolved_settings(cfg)  # bad settings fail before anything is written
    if cfg.split not in (None, "patient"):
        split = load_split(cfg.split)
        if "folds" not in split:
            raise MambasegError(f"{cfg.split}: cross-validation needs a K-fold split file "
                                "(mambaseg data split PATH --split patient --folds K -o FILE)")
        if folds is not None and folds != len(split["folds"]):
            raise MambasegError(f"--folds {folds} but {cfg.split} holds "
                                f"{len(split['folds'])} folds")
    else:
        split = make_split(find_slices(root), "patient", seed=cfg.split_seed,
                           folds=5 if folds is None else folds)
    _check_resolvable(root, split, cfg.split if cfg.split not in (None, "patient") else "the split")
    if overwrite and out.exists():
        _clear(out)
    out.mkdir(parents=True, exist_ok=True)
    save_split(split, out / SPLIT, overwrite=True)
    write_json(saved, {"format": "mambaseg-crossval", "folds": len(split["folds"]),
                       "settings": _train_settings(cfg)})
    return cfg, split


def _check_resolvable(root: Path, split: dict, name: str | Path) -> None:
    """Every fold's images exist under ``root`` with masks, and no patient is in two folds or
    parts (DataError naming the split ``name`` and every problem)."""
    known = {s.rel: s for s in find_slices(root)}
    check_folds(split, lambda r: known[r].patient if r in known else r.rsplit("/", 1)[0], name)
    listed = {r for fold in split["folds"] for p in PARTS for r in fold[p]}
    missing = sorted(r for r in listed if r not in known)
    no_mask = sorted(r for r in listed if r in known and known[r].mask is None)
    for what, rels in (("not found under " + str(root), missing), ("without a mask", no_mask)):
        if rels:
            raise DataError(f"{name}: {len(rels)} listed image(s) {what}:\n  "
                            + "\n  ".join(rels[:10]))


def _clear(out: Path) -> None:
    for path in out.iterdir():
        if path.name in (SETTINGS, SPLIT, SUMMARY, PREDICTIONS) or path.name.startswith("fold_"):
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def _resumed(given: TrainConfig, saved: dict, out: Path) -> TrainConfig:
    settings = dict(saved["settings"])
    conflicts = []
    for f in dataclasses.fields(TrainConfig):
        if f.name not in settings:
            continue
        new = getattr(given, f.name)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if new is None or new == default:
            continue
        if f.name in RESUME_MAY_CHANGE:
            settings[f.name] = str(new) if f.name == "data" else new
        elif new != settings[f.name]:
            conflicts.append(f"--{f.name.replace('_', '-')} {new} (the run has "
                             f"{settings[f.name]})")
    if conflicts:
        raise MambasegError(f"{out}: a resumed cross-validation keeps its settings; these "
                            "differ: " + "; ".join(conflicts))
    return TrainConfig(**settings, progress=given.progress)


# ----------------------------------------------------------------------------- one fold

def run_fold(cfg: TrainConfig, out: Path, fold: int, printer: Printer = print) -> dict:
    """Train fold ``fold`` (resuming its run if one was interrupted), then evaluate its model
    on the fold's test patients; returns the fold's row of the per-fold table."""
    run_dir = fold_dir(out, fold)
    resume = has_train_state(run_dir / "last")
    fold_cfg = dataclasses.replace(cfg, out=run_dir, split=str(Path(out) / SPLIT), fold=fold,
                                   resume=resume, overwrite=not resume)
    if resume:  # the run's own config.json holds the settings
        fold_cfg = TrainConfig(out=run_dir, resume=True, epochs=cfg.epochs, device=cfg.device,
                               progress=cfg.progress)

    def show(record: dict, epochs: int) -> None:
        printer(f"[fold {fold}] " + format_record(record, epochs))

    printer(f"[fold {fold}] {'resuming' if resume else 'training'} {cfg.model} in {run_dir}")
    t0 = time.perf_counter()
    result = train(fold_cfg, on_epoch_end=show)
    train_s = time.perf_counter() - t0
    summary, _ = run_evaluation(cfg.data, checkpoint=result.checkpoint_dir,
                                split=str(Path(out) / SPLIT), fold=fold, part="test",
                                out=run_dir / SUMMARY, save_predictions=True, overwrite=True,
                                device=cfg.device)
    row = fold_row(fold, summary, result.history, result.best_epoch, train_s)
    printer(f"[fold {fold}] test: per-patient Dice {row['dice_patient']:.4f} over "
            f"{row['n_patients']} patients ({row['train_minutes']:.1f} min)")
    return row


def fold_row(fold: int, summary: dict, history: list[dict], best_epoch: int | None,
             train_s: float | None = None) -> dict:
    """One line of the per-fold table from a fold's test summary and training history."""
    epoch_s = sum(float(r.get("epoch_time_s") or 0.0) for r in history)
    return {"fold": fold, "n_patients": summary["n_patients"], "n_slices": summary["n_slices"],
            "dice_patient": summary["dice_patient"]["mean"],
            "dice_global": summary["dice_global"]["mean"],
            "checkpoint": summary["checkpoint"], "best_epoch": best_epoch,
            "epochs": len(history),
            "best_val": max((r.get("val_dice_patient") or r.get("val_dice") or 0.0
                             for r in history), default=None),
            "train_minutes": round((train_s if train_s is not None else epoch_s) / 60.0, 3),
            "epoch_minutes": round(epoch_s / 60.0, 3)}


def _fold_worker(args: tuple) -> dict:
    cfg, out, fold = args
    return run_fold(cfg, out, fold, printer=lambda line: print(line, flush=True))


# ----------------------------------------------------------------------------- the whole run

def run_crossval(cfg: TrainConfig, out: str | Path, folds: int | None = 5,
                 only: list[int] | None = None, parallel: int = 1, resume: bool = False,
                 overwrite: bool = False, printer: Printer = print) -> dict | None:
    """Cross-validate ``cfg.model`` (see the module docstring). ``only`` runs those folds alone
    (e.g. one process per fold); ``parallel`` trains that many folds at once in separate
    processes (small models leave a GPU idle). Returns the OOF summary once every fold is done,
    else None."""
    out = Path(out)
    if parallel < 1:
        raise MambasegError(f"--parallel must be at least 1, got {parallel}")
    cfg, split = prepare(cfg, out, folds, resume, overwrite)
    k = len(split["folds"])
    todo = list(range(k)) if only is None else sorted(set(only))
    bad = [i for i in todo if not 0 <= i < k]
    if bad:
        raise MambasegError(f"--fold {bad[0]} is out of range: the split holds folds 0..{k - 1}")
    todo = [i for i in todo if not fold_done(out, i)]
    if todo:
        printer(f"cross-validating {cfg.model}: {k} folds, to do: "
                f"{', '.join(map(str, todo))} ({min(parallel, len(todo))} at a time)")
    if parallel > 1 and len(todo) > 1:
        child = dataclasses.replace(cfg, progress=False)
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(min(parallel, len(todo)), maxtasksperchild=1) as pool:
            pool.map(_fold_worker, [(child, out, i) for i in todo], chunksize=1)
    else:
        for i in todo:
            run_fold(cfg, out, i, printer)
            _free_memory()
    if not all(fold_done(out, i) for i in range(k)):
        left = [i for i in range(k) if not fold_done(out, i)]
        printer(f"folds still to do: {', '.join(map(str, left))} (run again with --resume)")
        return None
    return write_oof_summary(out, cfg.data, printer=printer)


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def fold_rows(out: Path, k: int) -> list[dict]:
    """The per-fold table from the saved fold folders."""
    rows = []
    for i in range(k):
        d = fold_dir(out, i)
        summary = json.loads((d / SUMMARY).read_text())
        history = read_metrics(d / "metrics.jsonl")
        try:
            meta = json.loads((d / "best" / "config.json").read_text())["metadata"]["training"]
            best = int(meta["epoch"])
        except (OSError, ValueError, KeyError, TypeError):
            best = best_epoch_of(history, d / "config.json")
        rows.append(fold_row(i, summary, history, best))
    return rows


def best_epoch_of(history: list[dict], config: Path) -> int | None:
    """The epoch ``best/`` holds, from the history alone (a fold folder saved without its
    weights): the first epoch of the highest validation score the run selected by
    (``select`` of its ``config.json``, as ``trainer.end_epoch`` tracks it); None when unknown."""
    try:
        key = "val_" + json.loads(config.read_text()).get("select", "dice")
    except (OSError, ValueError, AttributeError):
        return None
    best = None
    for r in history:
        score = r.get(key)
        if score is not None and (best is None or score > best[0]):
            best = (score, int(r["epoch"]))
    return best[1] if best else None


# ----------------------------------------------------------------------------- out of fold

#: post-processing tried on the OOF predictions (the first is none)
CANDIDATES = (
    PostProcess(),
    PostProcess(min_area=10),
    PostProcess(min_area=50),
    PostProcess(lcc=True),
    PostProcess(lcc=True, min_volume=500),
    PostProcess(lcc=True, min_volume=2000),
    PostProcess(lcc=True, min_volume=500, min_area=10),
    PostProcess(lcc=True, min_volume=2000, min_area=50),
)


def gather(out: Path, data: str | Path) -> tuple[list, np.ndarray]:
    """The test slices of every fold (sorted by patient and slice) and their predicted masks
    (bool (N, H, W)) from ``fold_<i>/predictions.npz``."""
    split_path = Path(out) / SPLIT
    k = len(load_split(split_path)["folds"])
    slices, masks = [], []
    for i in range(k):
        test = resolve_split(data, str(split_path), fold=i)["test"]
        pred = load_predictions(fold_dir(out, i) / PREDICTIONS)
        if list(pred["rel"]) != [s.rel for s in test]:
            raise DataError(f"{fold_dir(out, i) / PREDICTIONS}: its slices are not fold {i}'s "
                            "test slices; evaluate the fold again")
        slices += test
        masks.append(pred["masks"].astype(bool))
    order = sorted(range(len(slices)), key=lambda j: slice_key(slices[j]))
    return [slices[j] for j in order], np.concatenate(masks)[order]


def score_variants(pred: np.ndarray, truth: np.ndarray, patients: list[str],
                   candidates=CANDIDATES) -> list[dict]:
    """Per candidate: its settings and the OOF scores that choose among them (no bootstrap)."""
    rows = []
    for pp in candidates:
        tp, fp, fn = metrics.dice_counts(apply(pred, patients, pp), truth)
        names, ptp, pfp, pfn, _ = metrics.group_counts(tp, fp, fn, patients)
        rows.append({"postprocess": pp.to_dict(), "describe": pp.describe(),
                     "dice_patient": float(metrics.dice_from_counts(ptp, pfp, pfn).mean()),
                     "dice_global": float(metrics.dice_from_counts(tp.sum(), fp.sum(), fn.sum())),
                     "dice_slice_tumour": metrics.dice_slice(tp, fp, fn)["tumour_mean"],
                     "fpr_empty": metrics.fpr_empty(tp, fp, fn)["mean"]})
    return rows


def write_oof_summary(out: str | Path, data: str | Path, printer: Callable = print,
                      n_boot: int = metrics.N_BOOT) -> dict:
    """Score the OOF predictions of the cross-validation in ``out``; write and return its
    ``summary.json`` (see the module docstring)."""
    out = Path(out)
    t0 = time.perf_counter()
    slices, pred = gather(out, data)
    truth = load_arrays(slices, progress=False)[1].numpy()[:, 0] > 0
    patients = [s.patient for s in slices]
    variants = score_variants(pred, truth, patients)
    best = max(range(len(variants)), key=lambda j: (variants[j]["dice_patient"], -j))
    pp = CANDIDATES[best]
    post = apply(pred, patients, pp)
    tp, fp, fn = metrics.dice_counts(post, truth)
    hds, hdp = zip(*(metrics.hd95_both(post[i], truth[i]) for i in range(len(slices))))
    settings = json.loads((out / SETTINGS).read_text())
    rows = fold_rows(out, settings["folds"])
    first = json.loads((out / "fold_0" / SUMMARY).read_text())
    summary = {
        "model": first["model"], "parameters": first["parameters"], "checkpoint": str(out),
        "data": str(data), "split": str(out / "split.json"), "part": "oof",
        "folds": rows, "n_folds": len(rows),
        "n_slices": len(slices), "n_patients": len(set(patients)),
        "threshold": first.get("threshold", 0.5), "model_input_size": first.get("model_input_size"),
        "train_minutes": round(sum(r["train_minutes"] for r in rows), 2),
        "settings": settings["settings"],
        "postprocess": pp.to_dict(), "postprocess_describe": pp.describe(),
        "postprocess_variants": variants,
        "without_postprocess": variants[0],
        "mambaseg_version": __version__,
    }
    summary.update(metrics.summarize(tp, fp, fn, patients, hds, n_boot=n_boot, hd_pooled=hdp))
    summary["per_slice"] = per_slice_table(slices, tp, fp, fn, hds, hdp)
    summary["per_patient"] = per_patient_table(tp, fp, fn, patients)
    summary["predictions"] = PREDICTIONS
    summary["seconds"] = round(time.perf_counter() - t0, 3)
    write_predictions(out / PREDICTIONS, [s.rel for s in slices],
                      np.packbits(pred.astype(np.uint8), axis=-1), (len(slices), *pred.shape[1:]))
    write_json(out / SUMMARY, summary, indent=1)
    d = summary["dice_patient"]
    printer(f"out-of-fold over {summary['n_patients']} patients: per-patient Dice "
            f"{d['mean']:.4f} [{d['ci95'][0]:.3f}, {d['ci95'][1]:.3f}], median {d['median']:.4f}; "
            f"post-processing: {pp.describe()} (raw {variants[0]['dice_patient']:.4f})")
    printer(f"wrote {out / SUMMARY} and {out / PREDICTIONS}")
    return summary
