"""`mambaseg models`: list the registered models, their size and any shipped weights."""
from __future__ import annotations

import argparse
import json

from mambaseg.cli._common import add_command
from mambaseg.data.channels import LGG_CHANNELS


def register(sub) -> None:
    """Add `models` to the top-level subparsers."""
    p = add_command(sub, "models", "List every model: family, parameter count, accepted input "
                    "sizes, and whether trained weights are shipped (with their test Dice, "
                    "validation score and cross-validation Dice); shipped ensembles get their "
                    "own rows and * marks the default model of predict, segment() and demo.",
                    "mambaseg models")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    p.set_defaults(func=run)


def _params(r: dict) -> str:
    if r["num_parameters"] is None:
        return "n/a"
    n = f"{r['num_parameters']:,}"
    return f"{r['members']} x {n}" if (r.get("members") or 1) > 1 else n


def _channels(r: dict) -> str:
    """The shipped weights' input channels: "FLAIR" for a FLAIR-only model, "RGB" for the LGG
    slices' three (pre-contrast, FLAIR, post-contrast)."""
    names = r.get("channels")
    if not names:
        return "-"
    if [n.lower() for n in names] == [n.lower() for n in LGG_CHANNELS]:
        return "RGB"
    return "+".join(names)


def _cv_dice(r: dict) -> str:
    if r.get("cv_dice") is None:
        return "-"
    value = f"{r['cv_dice']:.4f}"
    if r.get("kind") == "ensemble":
        k = r.get("cv_folds") or r.get("members")
        return f"{value} ({k}-fold ensemble)"
    return value


def _default_line(r: dict) -> str:
    """The footnote naming the default model and its scores."""
    line = f"* default of predict, segment() and demo: {r['name']}"
    if r.get("val_dice") is not None:
        line += f", validation score {r['val_dice']:.4f}"
    if r.get("cv_dice") is not None:
        n = f" over {r['cv_patients']} patients" if r.get("cv_patients") else ""
        k = r.get("cv_folds")
        where = r.get("evaluated") or ""
        where = where[:-len("/summary.json")] if where.endswith("/summary.json") else where
        detail = ", ".join(x for x in (f"{k}-fold cross-validation" if k else
                                       "cross-validation", where) if x)
        return f"{line}, OOF per-patient Dice {r['cv_dice']:.4f}{n} ({detail})"
    if r.get("test_dice") is not None:
        return f"{line}, test Dice {r['test_dice']:.4f}" + \
            (f" ({r['evaluated']})" if r.get("evaluated") else "")
    return line


def format_table(rows: list[dict]) -> str:
    header = ("MODEL", "FAMILY", "PARAMS", "INPUT H, W", "TRAINED AT", "WEIGHTS", "CHANNELS",
              "TEST DICE", "VAL DICE", "CV DICE")
    lines = []
    for r in rows:
        lines.append((
            r["name"] + ("*" if r.get("default") else ""), r["family"] or "-",
            _params(r),
            "n/a" if r["size_multiple"] is None else f"multiple of {r['size_multiple']}, >= {r['min_size']}",
            "n/a" if r["input_size"] is None else f"{r['input_size']}x{r['input_size']}",
            "shipped" if r["weights_shipped"] else "-",
            _channels(r),
            "-" if r["test_dice"] is None else f"{r['test_dice']:.4f}",
            "-" if r.get("val_dice") is None else f"{r['val_dice']:.4f}",
            _cv_dice(r),
        ))
    widths = [max(len(str(c)) for c in col) for col in zip(header, *lines)]
    fmt = [str.rjust if h == "PARAMS" else str.ljust for h in header]
    out = ["  ".join(f(str(c), w) for c, w, f in zip(row, widths, fmt)).rstrip() for row in (header, *lines)]
    models = [r for r in rows if r.get("kind", "model") == "model"]
    extra = [r for r in rows if r.get("kind", "model") != "model"]
    shipped = sum(r["weights_shipped"] for r in models)
    ensembles = sum(r.get("kind") == "ensemble" for r in extra)
    out.append("")
    out.append(f"{len(models)} models, {shipped} with shipped trained weights"
               + (f", {ensembles} shipped ensemble{'s' if ensembles != 1 else ''}"
                  if ensembles else "")
               + (f", {len(extra) - ensembles} other shipped checkpoint"
                  f"{'s' if len(extra) - ensembles != 1 else ''}" if len(extra) > ensembles
                  else "")
               + " (load them with mambaseg.inference.loading.load_shipped(name)).")
    if any(r.get("channels") for r in rows):
        out.append("CHANNELS: what the shipped weights take: RGB, the LGG slices' "
                   f"{', '.join(LGG_CHANNELS)}; FLAIR, a FLAIR-only model "
                   "(predict picks it for grayscale slices and FLAIR volumes).")
    if any(r["weights_shipped"] for r in rows):
        out.append("TEST DICE: the shipped weights' recorded test Dice (for the bundled weights: "
                   "per-patient Dice on the leak-free split's test part; see results/README.md).")
    if any(r.get("val_dice") is not None for r in rows):
        out.append("VAL DICE: per-patient Dice on the validation patients carved out of each "
                   "fold's training patients, averaged over the folds; the default was chosen by "
                   "it (CV and TEST DICE are test scores).")
    if any(r.get("cv_dice") is not None for r in rows):
        out.append("CV DICE: out-of-fold per-patient Dice of the cross-validation that trained "
                   "the shipped weights (each patient scored by the fold model that never saw "
                   "it); an ensemble averages its fold models' probabilities.")
    if ensembles:
        out.append("PARAMS of an ensemble: members x parameters per member.")
    default = next((r for r in rows if r.get("default")), None)
    if default is not None:
        out.append(_default_line(default))
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
