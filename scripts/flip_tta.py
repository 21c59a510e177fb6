#!/usr/bin/env python3
"""Does flip test-time augmentation help? Scored on each fold's *validation* patients.

    python scripts/flip_tta.py results/cv/mambaseg_s_o1 \
        --weights src/mambaseg/weights/mambaseg_s_cv5 --data ~/lgg/kaggle_3m \
        --out results/cv/ablation/flip_tta_mambaseg_s_o1.json

For fold i of the cross-validation in CV_DIR, the fold model ``WEIGHTS/fold_<i>`` (a shipped
ensemble's member, or a fold's ``best/`` folder given as ``--weights CV_RUN_DIR --member best``)
predicts the validation slices of that fold (carved out of its training patients, never its test
patients) as they are, mirrored left-right, mirrored up-down, and both. Mirroring is what the
training augmentation does (``data.augment``), so the mirrored images are ones the model was
trained on. Per-patient Dice at threshold 0.5, without post-processing, of:

- ``none``: the plain prediction (what ``predict`` does);
- ``lr``: the mean of the plain and the left-right mirrored probabilities (2 passes);
- ``all4``: the mean over the four mirrorings (4 passes, as nnU-Net's mirroring).

It prints one row per fold and the mean, and writes them as JSON. The channels follow each
fold's ``config.json`` (``channels``: all or flair).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

VARIANTS = ("none", "lr", "all4")


def variant_probs(net, images, batch_size: int, device: str) -> dict:
    """Probabilities (N, 1, H, W) of each variant for images (N, C, H, W)."""
    from mambaseg.inference.runner import predict_probs

    def run(dims):
        x = images.flip(dims) if dims else images
        p = predict_probs(net, x, batch_size=batch_size, device=device)
        return p.flip(dims) if dims else p

    plain, lr, ud, both = run(()), run((-1,)), run((-2,)), run((-2, -1))
    return {"none": plain, "lr": (plain + lr) / 2, "all4": (plain + lr + ud + both) / 4}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cv_dir", type=Path, help="a cross-validation folder (split.json, fold_<i>/)")
    ap.add_argument("--weights", type=Path, required=True,
                    help="folder of the fold models: WEIGHTS/fold_<i>[/MEMBER]")
    ap.add_argument("--member", default="", help="sub-folder of each fold_<i> holding the "
                    "checkpoint (e.g. best); default: fold_<i> itself")
    ap.add_argument("--data", type=Path, required=True, help="the dataset (kaggle_3m)")
    ap.add_argument("--out", type=Path, help="write the rows as JSON here")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, help="torch CPU threads")
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    from mambaseg.data.dataset import load_arrays
    from mambaseg.data.layout import find_slices
    from mambaseg.data.splits import split_rels
    from mambaseg.errors import MambasegError
    from mambaseg.metrics import dice_counts, dice_from_counts, group_counts
    from mambaseg.models.checkpoint import from_pretrained

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        split = args.cv_dir / "split.json"
        k = len(json.loads(split.read_text())["folds"])
        by_rel = {s.rel: s for s in find_slices(args.data)}
        rows = []
        for i in range(k):
            rels = split_rels(split, i)["val"]
            missing = [r for r in rels if r not in by_rel]
            if missing:
                raise MambasegError(f"{args.data}: {len(missing)} validation slices of fold {i} "
                                    f"are missing, e.g. {missing[0]}")
            slices = [by_rel[r] for r in rels]
            cfg = json.loads((args.cv_dir / f"fold_{i}" / "config.json").read_text())
            images, masks = load_arrays(slices, progress=False, channels=cfg.get("channels", "all"))
            net = from_pretrained(args.weights / f"fold_{i}" / args.member, dtype=torch.float32)
            t0 = time.perf_counter()
            probs = variant_probs(net, images, args.batch_size, args.device)
            patients = [s.patient for s in slices]
            row = {"fold": i, "patients": len(set(patients)), "slices": len(slices)}
            for name, p in probs.items():
                tp, fp, fn = dice_counts((p[:, 0] > 0.5).numpy(), masks[:, 0].numpy())
                _, ptp, pfp, pfn, _ = group_counts(tp, fp, fn, patients)
                row[name] = float(dice_from_counts(ptp, pfp, pfn).mean())
            row["seconds"] = round(time.perf_counter() - t0, 1)
            rows.append(row)
            print(f"fold {i}: {row['patients']} validation patients, " + "  ".join(
                f"{v} {row[v]:.4f}" for v in VARIANTS) + f"  ({row['seconds']} s)", flush=True)
    except (MambasegError, OSError, KeyError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    mean = {v: float(np.mean([r[v] for r in rows])) for v in VARIANTS}
    print("mean over folds: " + "  ".join(f"{v} {mean[v]:.4f}" for v in VARIANTS))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({
            "cv_dir": str(args.cv_dir), "weights": str(args.weights), "device": args.device,
            "threshold": 0.5, "postprocess": "none", "score": "per-patient Dice, validation part",
            "folds": rows, "mean": mean}, indent=1) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
