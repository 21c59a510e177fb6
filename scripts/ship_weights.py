#!/usr/bin/env python3
"""Ship a finished cross-validation as an ensemble of its fold models, inside the package.

    python scripts/ship_weights.py results/cv/ulvm_unet_v6 \
        --dest src/mambaseg/weights/ulvm_unet_v6_cv5 --default

writes the ensemble folder (``ensemble.json`` + ``fold_<i>/`` fp16 checkpoints) with
``mambaseg.training.ship.ship_crossval``: the K checkpoints the cross-validation evaluated, the
post-processing it chose on its out-of-fold (OOF) predictions, and metadata holding the OOF
scores (``metrics.cv.dice_patient``, CV DICE in ``mambaseg models``) and the folds' mean
validation score (``metrics.cv.val_dice_patient``, VAL DICE: shipped models are ranked by it),
the path of the summary they come from and the training settings, so that every shipped number
traces back to a saved summary. ``--metrics-only`` rewrites just those scores of an ensemble
shipped earlier, from the saved results alone (``results/cv/<name>``, no fold weights)::

    python scripts/ship_weights.py results/cv/mambaseg_s_o1 --metrics-only \
        --dest src/mambaseg/weights/mambaseg_s_cv5 --evaluated results/cv/mambaseg_s_o1/summary.json

``--default`` marks it as the default model of ``predict``, ``segment()`` and ``demo``; mark
one shipped folder only.

(The single-checkpoint weights shipped before, ``src/mambaseg/weights/<model>/``, were written
by this script's earlier version from the leak-free ``patient`` protocol's runs; see git log.)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
from mambaseg.errors import MambasegError  # noqa: E402
from mambaseg.training.ship import default_name, refresh_metrics, ship_crossval  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cv_dir", type=Path, help="a finished cross-validation folder "
                    "('mambaseg crossval -o DIR')")
    ap.add_argument("--dest", type=Path, help="the ensemble folder to write (default: "
                    "src/mambaseg/weights/<model>_cv<K>)")
    ap.add_argument("--default", action="store_true", help="mark it as the default shipped "
                    "model (predict, segment() and demo use it when no model is named)")
    ap.add_argument("--fp32", action="store_true", help="store fp32 weights (default: fp16)")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing --dest")
    ap.add_argument("--metrics-only", action="store_true", help="rewrite only the scores "
                    "recorded in the shipped ensemble --dest from CV_DIR's saved results "
                    "(summary.json, crossval.json; no fold weights needed)")
    ap.add_argument("--evaluated", help="the summary path to record (default: CV_DIR/summary.json "
                    "relative to here), e.g. its copy under results/cv/ when CV_DIR is the GPU "
                    "machine's folder with the weights")
    a = ap.parse_args(argv)
    import torch

    try:
        dest = a.dest or REPO / "src" / "mambaseg" / "weights" / default_name(a.cv_dir)
        if a.metrics_only:
            out = refresh_metrics(dest, a.cv_dir, evaluated=a.evaluated)
        else:
            out = ship_crossval(a.cv_dir, dest, dtype=None if a.fp32 else torch.float16,
                                default=a.default, overwrite=a.overwrite,
                                evaluated=a.evaluated)
    except MambasegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from mambaseg.inference.ensemble import read_manifest

    meta = read_manifest(out)["metadata"]
    cv = meta["metrics"]["cv"]
    lo, hi = cv["dice_patient_ci95"] or (float("nan"), float("nan"))
    print(f"{out}: {cv['n_folds']}-fold ensemble of {meta['training'].get('model')}; OOF "
          f"per-patient Dice {cv['dice_patient']:.4f} [{lo:.3f}, {hi:.3f}] over "
          f"{cv['n_patients']} patients (post-processing: {cv['postprocess']}; from "
          f"{meta['evaluated']}; validation {cv.get('val_dice_patient') or float('nan'):.4f})"
          f"{'; the default shipped model' if meta['default'] else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
