"""``mambaseg report``: regenerate results/README.md and the figures from saved runs."""
from __future__ import annotations

import argparse
import sys

from mambaseg.cli._common import add_command, add_output


def register(sub) -> argparse.ArgumentParser:
    p = add_command(
        sub, "report",
        help="Regenerate README.md (Table I vs the paper) and Figs. 1-3 from a results folder's saved runs "
             "(and cv/README.md, the cross-validation results, when RESULTS_DIR/cv/ exists).",
        example="mambaseg report results -o runs/report",
    )
    p.add_argument("results", metavar="RESULTS_DIR",
                   help="results folder: paper/<model>/ and patient/<model>/ with each run's saved files "
                        "(and/or cv/<model>/; a folder holding no run is an error)")
    p.add_argument("--data", metavar="PATH", default=None,
                   help="the dataset (kaggle_3m): recount Fig. 1 from the masks and read Fig. 3's images; "
                        "saves data_stats.json and fig3_inputs.npz so later reports need only RESULTS_DIR")
    add_output(p, metavar="DIR", help="where to write README.md and figures/ (default: "
               "RESULTS_DIR)")
    p.add_argument("--slices", metavar="N|REL,REL", default=None,
                   help="Fig. 3's slices: a count, evenly spaced through the paper split's test tumour "
                        "slices (default 4), or comma-separated slice paths")
    p.add_argument("--quiet", action="store_true", help="do not print the table")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from mambaseg.report import make_report

    check_has_runs(args.results)
    result = make_report(args.results, data=args.data, out=args.output, slices=args.slices)
    if not args.quiet:
        print(result.table)
        print()
        if result.cv_table is not None:
            print("Cross-validation (cv/README.md):")
            print(result.cv_table)
            print()
    for w in result.warnings:
        print(f"warning: {w}", file=sys.stderr)
    for path in result.written:
        print(f"wrote {path}")
    return 0


def check_has_runs(results_dir) -> None:
    """MambasegError when ``results_dir`` (a folder) holds no saved run: nothing under paper/,
    patient/ or cv/ to report (a mistyped folder would otherwise give a README of empty rows)."""
    from pathlib import Path

    from mambaseg.errors import MambasegError
    from mambaseg.report.collect import load_runs
    from mambaseg.report.cv import CV_DIR, load_ablation, load_cv_models

    root = Path(results_dir)
    if not root.is_dir():
        return                                  # make_report says the folder is not there
    cv = root / CV_DIR
    if load_runs(root) or (cv.is_dir() and (load_cv_models(cv) or load_ablation(cv))):
        return
    raise MambasegError(f"{root} holds no runs to report: expected saved runs in "
                        f"{root / 'paper'}/<model>/, {root / 'patient'}/<model>/ or "
                        f"{root / CV_DIR}/<model>/ (config.json, metrics.jsonl or summary.json)")
