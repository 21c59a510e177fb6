"""The out-of-fold (OOF) result of a cross-validation: every patient predicted by the fold model
that never saw it, scored as one evaluation over all patients.

``write_oof_summary`` gathers the folds' saved test predictions (nothing is re-run), scores
them raw and under each post-processing candidate (:data:`CANDIDATES`), and writes
``summary.json`` (the keys of ``evaluate``'s summary, for the post-processing that gives the
highest OOF mean per-patient Dice, plus ``folds``, ``postprocess``, ``postprocess_variants`` and
``without_postprocess``) and ``predictions.npz`` (the raw OOF masks, packed bits).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import numpy as np

from mambaseg.engine import metrics
from mambaseg.engine.postprocess import PostProcess, apply
from mambaseg.errors import DataError

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
    from mambaseg.data.layout import slice_key
    from mambaseg.data.splits import load_split, resolve_split
    from mambaseg.engine.crossval import PREDICTIONS, SPLIT, fold_dir
    from mambaseg.engine.evaluate import load_predictions

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
    from mambaseg import __version__
    from mambaseg.data.dataset import load_arrays
    from mambaseg.engine.crossval import PREDICTIONS, SETTINGS, SUMMARY, fold_rows
    from mambaseg.engine.evaluate import Evaluation, _per_patient, _per_slice, write_json
    from mambaseg.engine.evaluate import write_predictions

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
    summary["per_slice"] = _per_slice(slices, tp, fp, fn, hds, hdp)
    summary["per_patient"] = _per_patient(tp, fp, fn, patients)
    summary["predictions"] = PREDICTIONS
    summary["seconds"] = round(time.perf_counter() - t0, 3)
    ev = Evaluation(summary, [s.rel for s in slices], np.packbits(pred.astype(np.uint8), axis=-1),
                    (len(slices), *pred.shape[1:]))
    write_predictions(out / PREDICTIONS, ev)
    write_json(out / SUMMARY, summary)
    d = summary["dice_patient"]
    printer(f"out-of-fold over {summary['n_patients']} patients: per-patient Dice "
            f"{d['mean']:.4f} [{d['ci95'][0]:.3f}, {d['ci95'][1]:.3f}], median {d['median']:.4f}; "
            f"post-processing: {pp.describe()} (raw {variants[0]['dice_patient']:.4f})")
    printer(f"wrote {out / SUMMARY} and {out / PREDICTIONS}")
    return summary
