"""`mambaseg crossval`: patient-level K-fold cross-validation; parsing and printing only (the
work is in training.crossval)."""
from __future__ import annotations

import argparse
from mambaseg.cli._common import add_command, add_output
from mambaseg.cli.train import add_model_and_data, add_training_options, config_from_args


def register(sub) -> None:
    """Add the `crossval` subcommand."""
    p = add_command(
        sub, "crossval",
        "Cross-validate a model over patients: split the patients into K folds (saved as "
        "OUT/split.json), train each fold's model on the other patients (validation patients "
        "carved out of them), test it on its own fold, then score the out-of-fold predictions "
        "of every patient as one result (OUT/summary.json, the keys of 'evaluate' plus a "
        "per-fold table) with and without post-processing.",
        "mambaseg crossval --model ulvm_unet_v2 --data examples/lgg-sample --folds 3 "
        "--epochs 1 --batch-size 4 --device cpu -o runs/cv-quick")
    add_model_and_data(p)
    p.add_argument("--folds", type=int, help="number of folds (default 5)")
    p.add_argument("--split", metavar="FILE", help="a K-fold split file to use instead of a new "
                   "split ('mambaseg data split PATH --split patient --folds K -o FILE')")
    p.add_argument("--split-seed", type=int, help="seed of the patient shuffle (default 37)")
    add_output(p, metavar="DIR", required=True, help="cross-validation folder")
    p.add_argument("--fold", type=int, nargs="+", dest="only", metavar="I",
                   help="run only these folds (e.g. one process per fold); the out-of-fold "
                        "summary is written once every fold is done")
    p.add_argument("--parallel", type=int, default=1, metavar="N",
                   help="train N folds at once, each in its own process (default 1); small "
                        "models leave a GPU idle")
    add_training_options(p)
    p.add_argument("--resume", action="store_true", help="continue the cross-validation in DIR "
                   "with the folds still to do")
    p.add_argument("--overwrite", action="store_true", help="start again in a DIR that holds "
                   "a cross-validation")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mambaseg.training.crossval import run_crossval

    cfg = config_from_args(args)
    summary = run_crossval(cfg, args.output, folds=args.folds, only=args.only,
                           parallel=args.parallel, resume=args.resume, overwrite=args.overwrite,
                           printer=lambda line: print(line, flush=True))
    if summary is None:
        return 0
    print(format_folds(summary["folds"]))
    return 0


def format_folds(rows: list[dict]) -> str:
    """The per-fold table as plain text."""
    lines = ["fold  patients  slices  dice_patient  dice_global  best_epoch  train_min"]
    for r in rows:
        lines.append(f"{r['fold']:>4}  {r['n_patients']:>8}  {r['n_slices']:>6}  "
                     f"{r['dice_patient']:>12.4f}  {r['dice_global']:>11.4f}  "
                     f"{str(r['best_epoch']):>10}  {r['train_minutes']:>9.2f}")
    return "\n".join(lines)
