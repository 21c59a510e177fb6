"""A stand-in for ``python -m mambaseg`` in test_reproduce: each subcommand writes the files the
real one writes (synthetic content), so scripts/reproduce.py can run end to end without a GPU.

``train --model broken`` fails; ``report`` is the real report. ``evaluate`` gives a run of
``train --seed s`` the dice_paper ``0.85 + 0.01 * s``.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: fake_results
import fake_results  # noqa: E402


def opt(argv: list[str], name: str, default=None):
    return argv[argv.index(name) + 1] if name in argv else default


def main(argv: list[str]) -> int:
    cmd = argv[0]
    if cmd == "data":
        protocol, out = opt(argv, "--split"), Path(opt(argv, "-o"))
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(fake_results.split_doc()[protocol]))
        return 0
    if cmd == "report":
        from mambaseg.report import make_report

        make_report(argv[1], data=opt(argv, "--data"))
        return 0
    if cmd == "train":
        model, out = opt(argv, "--model"), Path(opt(argv, "--out"))
        if model == "broken":
            print("RuntimeError: CUDA out of memory (simulated)", file=sys.stderr)
            return 1
        epochs = int(opt(argv, "--epochs", 3))
        out.mkdir(parents=True, exist_ok=True)
        metrics = out / "metrics.jsonl"
        done = len(metrics.read_text().splitlines()) if "--resume" in argv and metrics.exists() else 0
        (out / "config.json").write_text(json.dumps({
            "model": model, "split": opt(argv, "--split"), "seed": int(opt(argv, "--seed", 0)), "epochs": epochs, "batch_size": 16,
            "device": "auto", "device_name": "Fake GPU", "argv": argv,
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}))
        with open(metrics, "a" if done else "w") as fh:
            for e in range(done + 1, epochs + 1):
                fh.write(json.dumps({"epoch": e, "train_loss": 0.3, "val_loss": 0.3, "val_dice": 0.8,
                                     "lr": 1e-3, "epoch_time_s": 2.0, "images_per_s": 100.0}) + "\n")
        for ckpt in ("last", "best"):
            (out / ckpt).mkdir(exist_ok=True)
            (out / ckpt / "model.safetensors").write_bytes(b"0" * 1000)
        (out / "last" / "train_state.pt").write_bytes(b"0" * 1000)
        return 0
    if cmd == "evaluate":
        ckpt, out = Path(opt(argv, "--checkpoint")), Path(opt(argv, "--out"))
        cfg = json.loads((ckpt.parent / "config.json").read_text())
        test = json.loads(Path(opt(argv, "--split")).read_text())["test"]
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({
            "model": cfg["model"], "parameters": fake_results.PAPER_RUNS.get(cfg["model"], (0, 1234))[1],
            "checkpoint": str(ckpt), "split": opt(argv, "--split"), "part": "test",
            "dice_paper": {"mean": 0.85 + 0.01 * cfg["seed"]}, "dice_slice": {"mean": 0.8},
            "dice_patient": {"mean": 0.78, "ci95": [0.7, 0.85]}, "per_slice": [], "per_patient": []}))
        if "--save-predictions" in argv:
            masks = np.stack([fake_results.gt_mask(r) for r in test])
            np.savez_compressed(out.with_name("predictions.npz"), rel=np.array(test),
                                masks=np.packbits(masks, axis=-1), shape=np.array(masks.shape))
        return 0
    print(f"fake mambaseg: unknown command {argv}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
