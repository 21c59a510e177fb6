"""`mambaseg data verify|stats|split|convert`: check a dataset, count it, split it, convert it."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mambaseg.cli._common import add_command, add_option


def register(sub) -> None:
    """Add `data` and its subcommands to the top-level subparsers."""
    data = add_command(sub, "data", "Check, count and split a dataset (Kaggle kaggle_3m layout "
                       "or a folder of image/mask pairs).",
                       "mambaseg data verify examples/lgg-sample")
    data.set_defaults(func=lambda args: (data.print_help(), 2)[1])
    cmds = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")

    p = add_command(cmds, "verify", "Check every image and mask and list every problem, each "
                    "naming its file; exit status 1 if there is any (2 if PATH does not exist "
                    "or is not a folder).",
                    "mambaseg data verify examples/lgg-sample")
    p.add_argument("path", type=Path, help="dataset folder (kaggle_3m, its parent, or a folder "
                   "of image/mask pairs)")
    p.add_argument("--channels", type=int, default=3, help="image channels expected (default 3)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run_verify)

    p = add_command(cmds, "stats", "Count patients, slices and slices with and without tumour "
                    "per split part; print a table and save a bar chart (PNG).",
                    "mambaseg data stats examples/lgg-sample --split patient -o runs/fig1.png")
    p.add_argument("path", type=Path, help="dataset folder")
    p.add_argument("--split", help="paper, patient or a split JSON file (default: whole dataset)")
    add_option(p, "--split-seed", deprecated=("--seed",), type=int, metavar="N",
               help="seed of the paper/patient split (default 37)")
    p.add_argument("--fold", type=int, help="fold of a K-fold split file")
    p.add_argument("-o", "--output", type=Path, help="PNG bar chart to write")
    p.set_defaults(func=run_stats)

    p = add_command(cmds, "split", "Write a train/val/test split (JSON listing every slice's "
                    "image path relative to the dataset root).",
                    "mambaseg data split examples/lgg-sample --split patient --folds 3 "
                    "-o runs/folds.json")
    p.add_argument("path", type=Path, help="dataset folder")
    p.add_argument("--split", choices=("paper", "patient"), default="paper",
                   help="paper: slice-level 80/10/10 as in the paper (default); patient: "
                        "patient-level 80/10/10")
    add_option(p, "--split-seed", deprecated=("--seed",), type=int, metavar="N",
               help="seed of the random split (default 37)")
    p.add_argument("--folds", type=int, help="patient-level K-fold instead (needs --split patient)")
    p.add_argument("-o", "--output", type=Path, required=True, help="JSON file to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.set_defaults(func=run_split)

    p = add_command(cmds, "convert", "Write each patient of the dataset as NIfTI volumes: "
                    "OUT/<patient>_0000..0002.nii.gz (pre-contrast, FLAIR, post-contrast; "
                    "nnU-Net's naming) and <patient>_seg.nii.gz (the masks, 0/1), for "
                    "'mambaseg predict -i OUT'. The tifs carry no spacing: the volumes get a "
                    "placeholder (--spacing, default 1 x 1 x 1 mm; see docs/volumes.md).",
                    "mambaseg data convert examples/lgg-sample --to nifti -o runs/lgg-nifti")
    p.add_argument("path", type=Path, help="dataset folder")
    p.add_argument("--to", choices=("nifti",), required=True, help="output format: nifti")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUT",
                   help="folder to write the volumes into (created)")
    p.add_argument("--spacing", type=float, nargs=3, metavar=("X", "Y", "Z"),
                   help="placeholder voxel size in mm: columns, rows, slices (default 1 1 1)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.set_defaults(func=run_convert)


def run_verify(args: argparse.Namespace) -> int:
    from mambaseg.data.verify import verify_dataset
    from mambaseg.errors import DataError

    # a PATH that is not there is a usage error (2); exit status 1 means "problems found"
    if not args.path.exists():
        raise DataError(f"{args.path}: folder does not exist")
    if not args.path.is_dir():
        raise DataError(f"{args.path}: not a folder (give the dataset folder)")
    report = verify_dataset(args.path, channels=args.channels,
                            progress=False if args.no_progress else None)
    for problem in report.problems:
        print(problem)
    if report.problems:
        print(f"{len(report.problems)} problem(s) found in {report.root}", file=sys.stderr)
        return 1
    print(report.summary())
    return 0


def run_stats(args: argparse.Namespace) -> int:
    from mambaseg.data.stats import dataset_stats, format_stats, plot_stats

    stats = dataset_stats(args.path, split=args.split, seed=args.split_seed, fold=args.fold)
    print(format_stats(stats))
    if args.output:
        print(f"bar chart written to {plot_stats(stats, args.output)}")
    return 0


def run_split(args: argparse.Namespace) -> int:
    from mambaseg.data.layout import find_slices
    from mambaseg.data.splits import PARTS, make_split, save_split
    from mambaseg.errors import MambasegError

    if args.output.exists() and not args.overwrite:
        raise MambasegError(f"{args.output}: file exists (pass --overwrite to replace it)")
    data = make_split(find_slices(args.path), args.split, seed=args.split_seed, folds=args.folds)
    save_split(data, args.output, overwrite=args.overwrite)
    for i, part_map in enumerate(data.get("folds", [data])):
        prefix = f"fold {i}: " if "folds" in data else ""
        print(prefix + ", ".join(f"{p} {len(part_map[p])}" for p in PARTS))
    print(f"split written to {args.output}")
    return 0


def run_convert(args: argparse.Namespace) -> int:
    from mambaseg.data.convert import PLACEHOLDER_SPACING, convert_to_nifti

    spacing = tuple(args.spacing) if args.spacing else PLACEHOLDER_SPACING
    done = convert_to_nifti(args.path, args.output, spacing=spacing, overwrite=args.overwrite)
    for entry in done:
        print(f"{entry['patient']}: {entry['slices']} slices -> {', '.join(entry['files'])}")
    print(f"{len(done)} patient(s) written to {args.output} (placeholder spacing "
          f"{' x '.join(f'{s:g}' for s in spacing)} mm)")
    return 0
