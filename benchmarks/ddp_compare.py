"""Compare training runs (e.g. one GPU against torchrun DDP) from their saved files (not a test).

    python benchmarks/ddp_compare.py results/paper/unet \\
        benchmarks/results/ddp_unet_100ep/single_seed1 benchmarks/results/ddp_unet_100ep/ddp2_seed0

Each RUN folder holds ``config.json`` and ``metrics.jsonl`` of a ``mambaseg train`` run, and the
test-set evaluation of its checkpoint as ``summary.json`` or as the table ``mambaseg evaluate``
printed (``evaluate.txt``). Prints one row per run: processes, seed, median epoch time, final
and best validation Dice, the spread of validation Dice over the last 10 epochs, and the test
metrics.
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path

TEST_METRICS = ("dice_paper", "dice_patient", "dice_global")


def test_metrics(run: Path) -> dict[str, float]:
    """Test means from ``summary.json``, else parsed from ``evaluate.txt``."""
    if (run / "summary.json").is_file():
        s = json.loads((run / "summary.json").read_text())
        return {k: float(s[k]["mean"]) for k in TEST_METRICS if k in s}
    out = {}
    if (run / "evaluate.txt").is_file():
        for line in (run / "evaluate.txt").read_text().splitlines():
            m = re.match(r"^(\w+)\s+(-?[0-9.]+)\s", line)
            if m and m.group(1) in TEST_METRICS:
                out[m.group(1)] = float(m.group(2))
    return out


def row(run: Path) -> dict:
    cfg = json.loads((run / "config.json").read_text())
    hist = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line]
    val = [h["val_dice"] for h in hist]
    best = max(range(len(val)), key=val.__getitem__)
    last10 = val[-10:]
    return {"run": str(run), "procs": cfg.get("world_size", 1), "seed": cfg.get("seed"),
            "device": cfg.get("device_name", "?"), "epochs": len(hist),
            "epoch_s": statistics.median(h["epoch_time_s"] for h in hist),
            "val_last": val[-1], "val_best": val[best], "best_epoch": hist[best]["epoch"],
            "val10": (min(last10), max(last10)), **test_metrics(run)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path)
    args = p.parse_args(argv)
    rows = [row(r) for r in args.runs]
    head = (f"{'run':<46} {'procs':>5} {'seed':>4} {'epochs':>6} {'epoch s':>7} {'val last':>8} "
            f"{'val best (ep)':>13} {'val last 10':>13} " + " ".join(f"{k:>12}" for k in TEST_METRICS))
    print(f"device: {', '.join(sorted({r['device'] for r in rows}))}")
    print(head)
    print("-" * len(head))
    for r in rows:
        tests = " ".join(f"{r[k]:>12.4f}" if k in r else f"{'-':>12}" for k in TEST_METRICS)
        print(f"{r['run'][-46:]:<46} {r['procs']:>5} {r['seed']:>4} {r['epochs']:>6} "
              f"{r['epoch_s']:>7.2f} {r['val_last']:>8.4f} {r['val_best']:>8.4f} ({r['best_epoch']:>3}) "
              f"{r['val10'][0]:>6.3f}-{r['val10'][1]:.3f} {tests}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
