"""`mambaseg models`: list the registered models, their size and any shipped weights."""
from __future__ import annotations

import argparse
import json

from mambaseg.cli._common import add_command


def register(sub) -> None:
    """Add `models` to the top-level subparsers."""
    p = add_command(sub, "models", "List every model: family, parameter count, accepted input "
                    "sizes, and whether trained weights are shipped (with their test Dice).",
                    "mambaseg models --json")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    p.set_defaults(func=run)


def format_table(rows: list[dict]) -> str:
    header = ("MODEL", "FAMILY", "PARAMS", "INPUT H, W", "TRAINED AT", "WEIGHTS", "TEST DICE")
    lines = []
    for r in rows:
        lines.append((
            r["name"], r["family"],
            "n/a" if r["num_parameters"] is None else f"{r['num_parameters']:,}",
            "n/a" if r["size_multiple"] is None else f"multiple of {r['size_multiple']}, >= {r['min_size']}",
            "n/a" if r["input_size"] is None else f"{r['input_size']}x{r['input_size']}",
            "shipped" if r["weights_shipped"] else "-",
            "-" if r["test_dice"] is None else f"{r['test_dice']:.4f}",
        ))
    widths = [max(len(str(c)) for c in col) for col in zip(header, *lines)]
    fmt = [str.rjust if h == "PARAMS" else str.ljust for h in header]
    out = ["  ".join(f(str(c), w) for c, w, f in zip(row, widths, fmt)).rstrip() for row in (header, *lines)]
    shipped = sum(r["weights_shipped"] for r in rows)
    out.append("")
    out.append(f"{len(rows)} models, {shipped} with shipped trained weights "
               "(load them with mambaseg.models.load_shipped(name)).")
    if shipped:
        out.append("TEST DICE: the shipped weights' recorded test Dice (for the bundled weights: "
                   "per-patient Dice on the leak-free split's test part; see results/README.md).")
    out += [f"note: {r['name']}: {r['note']}" for r in rows if r["note"]]
    return "\n".join(out)


def run(args: argparse.Namespace) -> int:
    from mambaseg.models import describe_models

    rows = describe_models()
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(format_table(rows))
    return 0
