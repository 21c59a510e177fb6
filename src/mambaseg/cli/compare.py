"""`mambaseg compare`: paired comparison of the per-patient Dice of two results."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from mambaseg.cli._common import add_command


def register(sub) -> None:
    """Add the `compare` subcommand."""
    # mambaseg.metrics.N_BOOT and BOOT_SEED, spelled out: building the parser imports no numpy
    # (a fast --help; tests/cli/test_onnx_cli.py checks that the values agree)
    N_BOOT, BOOT_SEED = 10_000, 0

    p = add_command(sub, "compare", "Compare two results over the same patients: per-patient "
                    "Dice of A minus B, with a paired bootstrap 95 %% CI of the mean difference, "
                    "the Wilcoxon signed-rank p-value, wins/ties/losses and a verdict. A and B "
                    "are results folders holding summary.json (from 'evaluate' or 'crossval') "
                    "or summary.json files.",
                    "mambaseg compare results/cv/ulvm_unet_v6 results/cv/unet")
    p.add_argument("a", type=Path, metavar="A", help="first result (folder or summary.json)")
    p.add_argument("b", type=Path, metavar="B", help="second result (folder or summary.json)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--n-boot", type=int, default=N_BOOT, metavar="N",
                   help=f"bootstrap resamples (default {N_BOOT})")
    p.add_argument("--seed", type=int, default=BOOT_SEED, metavar="S",
                   help=f"seed of the bootstrap draws (default {BOOT_SEED})")
    p.add_argument("-o", "--output", type=Path, metavar="FILE",
                   help="also write the result as JSON to FILE")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mambaseg.compare import compare_paths
    from mambaseg.files import json_ready
    from mambaseg.errors import MambasegError

    if args.n_boot < 1:
        raise MambasegError(f"--n-boot must be at least 1, got {args.n_boot}")
    out = args.output
    if out is not None:
        if out.is_dir():
            raise MambasegError(f"--output {out} is a directory; give a file name such as "
                                f"{out}/compare.json")
        if out.exists() and not args.overwrite:
            raise MambasegError(f"{out} already exists; pass --overwrite to replace it")
    result = json_ready(compare_paths(args.a, args.b, n_boot=args.n_boot, seed=args.seed))
    if out is not None:
        from mambaseg.files import write_json

        write_json(out, result, indent=1)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(format_comparison(result))
        if out is not None:
            print(f"wrote {out}")
    return 0


def _f(v, sign: bool = False) -> str:
    if v is None:
        return "-"
    return f"{v:+.4f}" if sign else f"{v:.4f}"


def format_comparison(r: dict) -> str:
    """A result of ``compare_paths`` (or ``paired_comparison``) as a short plain-text table."""
    from mambaseg.compare import format_p

    lines = []
    if "label_a" in r:
        lines += [f"A: {r['label_a']}  ({r['path_a']})", f"B: {r['label_b']}  ({r['path_b']})"]
    lo, hi = r["ci95"]
    rows = [
        ("patients", str(r["n"]), "paired, per-patient Dice"),
        ("mean A", _f(r["mean_a"]), ""),
        ("mean B", _f(r["mean_b"]), ""),
        ("mean A - B", _f(r["mean_diff"], True),
         f"95% CI [{_f(lo, True)}, {_f(hi, True)}] (paired bootstrap, {r['n_boot']} "
         f"resamples, seed {r['seed']})"),
        ("median A - B", _f(r["median_diff"], True), ""),
        ("Wilcoxon p", format_p(r["p_wilcoxon"]), "signed-rank, two-sided"),
        ("wins/ties/losses", f"{r['wins']}/{r['ties']}/{r['losses']}", "patients with A > B / = / <"),
    ]
    w0 = max(len(x[0]) for x in rows)
    w1 = max(len(x[1]) for x in rows)
    lines += [f"{k.ljust(w0)}  {v.ljust(w1)}  {note}".rstrip() for k, v, note in rows]
    lines.append(f"verdict: {r['verdict']}")
    return "\n".join(lines)
