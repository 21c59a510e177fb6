#!/usr/bin/env python3
"""Copy trained checkpoints into the package as shipped fp16 weights, with their test metrics.

    python scripts/ship_weights.py RUNS_DIR [--results results] [--protocol patient]

For each ``RUNS_DIR/<protocol>/<model>/best`` (the checkpoint the leak-free protocol evaluates)
whose summary is in ``results/<protocol>/<model>/summary.json``, writes
``src/mambaseg/weights/<model>/`` (config.json + fp16 model.safetensors). The config's metadata
holds the test metrics (``metrics.test.dice`` = per-patient volumetric Dice on the leak-free
test part, the number ``mambaseg predict`` ranks shipped models by), the split and the training
settings, so that every shipped number traces back to a saved summary.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
from mambaseg.models import from_pretrained  # noqa: E402

KEEP = ("model", "split", "preset", "epochs", "batch_size", "lr", "optimizer", "weight_decay",
        "loss", "augment", "seed", "device_name")


def ship(run: Path, summary: dict, config: dict, dest: Path, protocol: str) -> None:
    model = from_pretrained(run)
    test = {k: summary[k]["mean"] for k in ("dice_paper", "dice_slice", "dice_global", "iou")}
    test["dice"] = summary["dice_patient"]["mean"]
    test["dice_patient_ci95"] = summary["dice_patient"].get("ci95")
    meta = {
        "metrics": {"test": test},
        "protocol": protocol,
        "evaluated": f"results/{protocol}/{config['model']}/summary.json",
        "training": {k: config.get(k) for k in KEEP},
        "data": "LGG (Buda et al. 2019), kaggle_3m, CC BY-NC-SA 4.0",
    }
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, metadata=meta, dtype=torch.float16)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    print(f"{dest}: test per-patient Dice {test['dice']:.4f}, dice_paper {test['dice_paper']:.4f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", type=Path)
    ap.add_argument("--results", type=Path, default=REPO / "results")
    ap.add_argument("--protocol", default="patient")
    ap.add_argument("--models", default="ulvm_unet,ulvm_unet_v1,ulvm_unet_v2,ulvm_unet_v3,"
                                        "ulvm_unet_v4,ulvm_unet_v5,ulvm_unet_v6")
    ap.add_argument("--dest", type=Path, default=REPO / "src" / "mambaseg" / "weights")
    a = ap.parse_args()
    for name in a.models.split(","):
        run = a.runs / a.protocol / name / "best"
        res = a.results / a.protocol / name
        summary = json.loads((res / "summary.json").read_text())
        config = json.loads((res / "config.json").read_text())
        ship(run, summary, config, a.dest / name, a.protocol)


if __name__ == "__main__":
    main()
