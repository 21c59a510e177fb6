"""`mambaseg evaluate`: score a checkpoint (or an ensemble of several) on a split part and write
summary.json. Also home of the post-processing options shared with `mambaseg predict`."""
from __future__ import annotations

import argparse
import math
from pathlib import Path

from mambaseg.cli._common import (add_command, add_device, add_option, add_output,
                                  check_threshold_and_batch, resolve_checkpoints)


def register(sub) -> None:
    """Add the `evaluate` subcommand."""
    p = add_command(sub, "evaluate", "Evaluate a trained checkpoint on one part of a split: "
                    "Dice (paper, per slice, per patient with a bootstrap 95 %% CI, global), IoU, "
                    "precision, recall, HD95, false positives on tumour-free slices; writes "
                    "summary.json (see docs/metrics.md).",
                    "mambaseg evaluate --checkpoint runs/quick   # after the 'train' example")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", type=Path, metavar="DIR", nargs="+",
                     help="checkpoint directory (written by 'mambaseg train'; a training run "
                     "folder stands for the checkpoint it evaluates, best/ by default) or "
                     "ensemble folder; several: average their probabilities (an ensemble; the "
                     "first gives the default --output and the training run's settings)")
    src.add_argument("--model", metavar="NAME", help="use the shipped weights of this model "
                     "(needs --output)")
    p.add_argument("--data", type=Path, metavar="PATH", help="dataset folder (kaggle_3m or its "
                   "parent; default: the training run's data)")
    p.add_argument("--split", metavar="NAME", help="paper, patient, or a split JSON file "
                   "(default: the training run's split, else paper)")
    p.add_argument("--part", default="test", choices=("train", "val", "test"),
                   help="part of the split to evaluate (default test)")
    add_option(p, "--split-seed", deprecated=("--seed",), type=int, metavar="N",
               help="seed of the paper/patient split (default 37; the training run's when "
               "--split is not given either)")
    p.add_argument("--fold", type=int, help="fold of a K-fold split file")
    add_output(p, metavar="FILE", help="summary file to write (default "
               "CHECKPOINT/summary.json, or summary-<part>.json for other parts)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing summary")
    add_device(p)
    p.add_argument("--batch-size", type=int, default=16, help="slices per forward pass (default "
                   "16, at most 2 on the CPU; dice_paper always pools batches of 16)")
    p.add_argument("--threshold", type=float, default=0.5, help="probability threshold (default 0.5)")
    add_option(p, "--amp", choices=("bf16", "off"), default="off", bare="bf16",
               help="mixed precision: bf16 (faster on GPU) or off (the default)")
    p.add_argument("--nan-policy", choices=("error", "zero"), default="error",
                   help="images with NaN/Inf pixels: error (default; names the file) or zero "
                        "(replace them by 0; summary.json lists them under nan_replaced)")
    p.add_argument("--save-predictions", action="store_true",
                   help="also write predictions.npz (bit-packed binary masks) beside the summary")
    add_postprocess_options(p)
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run)


def add_postprocess_options(p: argparse.ArgumentParser) -> None:
    """The post-processing options of evaluate and predict (see ``inference.postprocess``)."""
    g = p.add_argument_group("post-processing (default: the checkpoint's recommended "
                             "post-processing if it records one, else none)")
    g.add_argument("--lcc", action="store_true", help="keep only the largest 3-D connected "
                   "component of each patient's predicted masks")
    g.add_argument("--min-volume", type=int, metavar="N", help="with --lcc, also keep the "
                   "other components of at least N voxels")
    g.add_argument("--min-area", type=int, metavar="N", help="empty the slices with fewer than "
                   "N predicted pixels")
    g.add_argument("--no-postprocess", action="store_true", help="no post-processing, not even "
                   "the checkpoint's recommended one")


def postprocess_from_args(args: argparse.Namespace):
    """``"auto"`` (no option given), or the PostProcess the options ask for; MambasegError for
    negative sizes, --min-volume without --lcc, and --no-postprocess with another option."""
    from mambaseg.inference.postprocess import PostProcess
    from mambaseg.errors import MambasegError

    for flag, value in (("--min-volume", args.min_volume), ("--min-area", args.min_area)):
        if value is not None and value < 0:
            raise MambasegError(f"{flag} must be 0 or more, got {value}")
    given = args.lcc or args.min_volume is not None or args.min_area is not None
    if args.no_postprocess:
        if given:
            raise MambasegError("--no-postprocess cannot be combined with --lcc, --min-volume "
                                "or --min-area")
        return PostProcess()
    if not given:
        return "auto"
    if args.min_volume and not args.lcc:
        raise MambasegError("--min-volume applies to the 3-D component filter: add --lcc")
    return PostProcess(lcc=args.lcc, min_volume=args.min_volume or 0,
                       min_area=args.min_area or 0)


def describe_postprocess(summary: dict) -> str:
    """One line saying which post-processing was applied and where it came from."""
    from mambaseg.inference.postprocess import PostProcess

    pp = PostProcess.from_dict(summary.get("postprocess"))
    source = {"checkpoint": " (recommended by the checkpoint; --no-postprocess turns it off)",
              "options": " (from the options)"}.get(summary.get("postprocess_source"), "")
    return f"post-processing: {pp.describe()}" + (source if pp.active else "")


def run(args: argparse.Namespace) -> int:
    from mambaseg.inference.evaluate import run_evaluation

    check_threshold_and_batch(args)
    summary, out = run_evaluation(
        args.data, checkpoint=resolve_checkpoints(args.checkpoint), model=args.model,
        split=args.split, part=args.part, out=args.output, device=args.device,
        batch_size=args.batch_size,
        threshold=args.threshold, save_predictions=args.save_predictions,
        overwrite=args.overwrite, seed=args.split_seed, fold=args.fold,
        amp=args.amp == "bf16",
        progress=not args.no_progress, postprocess=postprocess_from_args(args),
        nan_policy=args.nan_policy)
    members = summary.get("ensemble_members")
    print(f"{summary['model']}" + (f" ensemble of {members}" if members else "")
          + f" ({summary['parameters']:,} parameters) on the {summary['part']} "
          f"part of split {summary['split']}: {summary['n_slices']} slice(s) of "
          f"{summary['n_patients']} patient(s), device {summary['device']}")
    print(describe_postprocess(summary))
    print(format_table(summary))
    if summary.get("without_postprocess"):
        print(format_raw(summary["without_postprocess"]))
    print(f"wrote {out}" + (f" and {out.parent / summary['predictions']}"
                            if summary.get("predictions") else ""))
    return 0


def _num(v, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.{digits}f}"


def format_raw(raw: dict) -> str:
    """The ``without_postprocess`` numbers of a summary, on one line."""
    f = raw["fpr_empty"]
    return (f"without post-processing: dice_patient {_num(raw['dice_patient']['mean'])}, "
            f"dice_global {_num(raw['dice_global']['mean'])}, dice_slice "
            f"{_num(raw['dice_slice']['mean'])}, fpr_empty {_num(f['mean'])} "
            f"({f['n_false_positive_slices']}/{f['n_empty_slices']})")


def format_table(summary: dict) -> str:
    """The metrics of a summary as a plain-text table."""
    s = summary
    rows = [("metric", "mean", "median", "95% CI", "notes")]

    def row(key, note="", digits=4):
        m = s[key]
        ci = m.get("ci95")
        rows.append((key, _num(m.get("mean"), digits), _num(m.get("median"), digits),
                     f"[{_num(ci[0], digits)}, {_num(ci[1], digits)}]" if ci else "", note))

    dp = s["dice_paper"]
    row("dice_paper", f"{dp['n_batches']} batches of {dp['batch_size']}, "
                      f"{dp['n_empty_batches']} all-empty")
    ds = s["dice_slice"]
    row("dice_slice", f"{ds['n']} slices")
    rows.append(("dice_slice (tumour)", _num(ds["tumour_mean"]), _num(ds["tumour_median"]), "",
                 f"{ds['n_tumour']} tumour slices"))
    row("dice_patient", f"{s['dice_patient']['n']} patient(s), bootstrap CI")
    for key in ("dice_global", "iou", "precision", "recall"):
        row(key, "all pixels pooled")
    h = s["hd95"]
    row("hd95", f"px; {h['n']} slices, {h['n_empty_prediction']} tumour slices predicted empty",
        digits=2)
    f = s["fpr_empty"]
    row("fpr_empty", f"{f['n_false_positive_slices']}/{f['n_empty_slices']} tumour-free slices; "
                     f"{_num(f['mean_predicted_pixels'], 1)} px mean")
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4] for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(line.rstrip() for line in lines)
