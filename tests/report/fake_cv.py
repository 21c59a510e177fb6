"""Build a small, synthetic ``results/cv/`` folder for the cross-validation report tests.

Layout follows ``mambaseg crossval``: cv/<model>/{crossval.json, split.json, summary.json,
predictions.npz, fold_<i>/{config.json, metrics.jsonl, summary.json, predictions.npz}};
cv/<model>-paper/ for the paper preset; cv/ablation/<row>/{config.json, metrics.jsonl};
cv/notes.md and cv/machine.json. The numbers are chosen so every formatted cell is known.
"""
from __future__ import annotations

import json
from pathlib import Path

PATIENTS = [f"TCGA_XX_{1000 + i}_19990101" for i in range(8)]
#: folder -> per-patient (tp, fp, fn) counts over PATIENTS (their Dice: 2tp / (2tp + fp + fn))
COUNTS = {
    "unet": [(80, 10, 10), (60, 20, 20), (90, 5, 5), (40, 30, 30), (70, 15, 15), (50, 25, 25),
             (85, 8, 7), (30, 35, 35)],
    "ulvm_unet_v2": [(85, 8, 7), (62, 18, 20), (91, 4, 5), (45, 28, 27), (70, 15, 15),
                     (55, 22, 23), (88, 6, 6), (35, 32, 33)],
    "unet-paper": [(70, 20, 20), (50, 30, 30), (88, 7, 5), (30, 40, 40), (65, 20, 15),
                   (40, 30, 40), (80, 10, 10), (20, 45, 45)],
}
#: folder -> (model, preset)
MODELS = {"unet": ("unet", "recommended"), "ulvm_unet_v2": ("ulvm_unet_v2", "recommended"),
          "unet-paper": ("unet", "paper")}
#: folder -> numbers of its summary.json besides the per-patient table
NUMBERS = {
    "unet": {"parameters": 7765985, "ci95": [0.61, 0.81], "median": 0.7321, "global": 0.7812,
             "tumour": 0.6543, "hd95": 12.345, "fp": 12, "empty": 222, "minutes": 123.456,
             "epochs": 40, "raw": 0.7001, "post": "3-D largest component"},
    "ulvm_unet_v2": {"parameters": 42737, "ci95": [0.64, 0.83], "median": 0.7555,
                     "global": 0.7999, "tumour": 0.6611, "hd95": 9.87, "fp": 7, "empty": 222,
                     "minutes": 45.04, "epochs": 40, "raw": 0.7301, "post": "none"},
    "unet-paper": {"parameters": 7765985, "ci95": [0.5, 0.73], "median": 0.6601, "global": 0.7001,
                   "tumour": 0.5999, "hd95": 20.0, "fp": 40, "empty": 222, "minutes": 300.0,
                   "epochs": 100, "raw": 0.6111, "post": "none"},
}
#: the unfinished cross-validation: folder, its folds, the folds done
UNFINISHED = ("umamba_bot", 3, (0, 2))
#: ablation row -> (settings changed from BASE_CONFIG, val_dice_patient per epoch)
BASE_CONFIG = {"model": "unet", "fold": 0, "epochs": 4, "batch_size": 16, "lr": 1e-3,
               "optimizer": "adamw", "weight_decay": 1e-4, "loss": "bce_dice", "scheduler": "none",
               "warmup_epochs": 0, "augment": False, "tumour_fraction": None, "select": "dice",
               "image_size": None, "seed": 0}
ABLATION = {
    "a_baseline": ({}, [0.50, 0.61, 0.58, 0.55]),
    "b_augment": ({"augment": True}, [0.52, 0.60, 0.66, 0.64]),
    "c_cosine": ({"augment": True, "scheduler": "cosine", "warmup_epochs": 2},
                 [0.50, 0.63, 0.69, 0.68]),
    "d_oversample": ({"augment": True, "scheduler": "cosine", "warmup_epochs": 2,
                      "tumour_fraction": 0.5, "select": "dice_patient"},
                     [0.55, 0.71, 0.74, 0.735]),
}
MACHINE = {"device": "NVIDIA H100 80GB HBM3", "date": "2026-12-01",
           "command": "mambaseg crossval --model unet --parallel 5 -o results/cv/unet"}
NOTES = "# Notes\n\nCV-NOTE-MARKER-17: the ablation used fold 0.\n"


def dice(tp: int, fp: int, fn: int) -> float:
    return 2 * tp / (2 * tp + fp + fn)


def per_patient(folder: str) -> dict[str, float]:
    return {p: dice(*c) for p, c in zip(PATIENTS, COUNTS[folder])}


def mean(folder: str) -> float:
    values = list(per_patient(folder).values())
    return sum(values) / len(values)


def _write(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2))


def crossval_doc(model: str, preset: str, folds: int, epochs: int | None = None) -> dict:
    return {"format": "mambaseg-crossval", "folds": folds,
            "settings": {"model": model, "preset": preset, "epochs": epochs, "batch_size": None,
                         "lr": None, "seed": None, "device": "cuda"}}


def fold_rows(folder: str) -> list[dict]:
    """Three folds over PATIENTS (3, 3, 2 patients); fold means of the per-patient Dice."""
    pp = list(per_patient(folder).values())
    parts = [pp[0:3], pp[3:6], pp[6:8]]
    total = NUMBERS[folder]["minutes"]
    return [{"fold": i, "n_patients": len(part), "n_slices": 20 * len(part),
             "dice_patient": sum(part) / len(part), "dice_global": sum(part) / len(part) + 0.01,
             "checkpoint": f"fold_{i}/best", "best_epoch": 10 + i, "epochs": NUMBERS[folder]["epochs"],
             "best_val": 0.7, "train_minutes": round(total / 3, 3), "epoch_minutes": 1.0}
            for i, part in enumerate(parts)]


VARIANTS = [  # (describe, postprocess) of the candidates written to postprocess_variants
    ("none", {"lcc": False, "min_volume": 0, "min_area": 0}),
    ("slices with < 10 px emptied", {"lcc": False, "min_volume": 0, "min_area": 10}),
    ("3-D largest component", {"lcc": True, "min_volume": 0, "min_area": 0}),
]


def summary_doc(folder: str) -> dict:
    model, preset = MODELS[folder]
    n = NUMBERS[folder]
    variants = [{"postprocess": pp, "describe": d, "dice_patient": n["raw"] + 0.01 * j,
                 "dice_global": 0.75 + 0.01 * j, "dice_slice_tumour": 0.6 + 0.01 * j,
                 "fpr_empty": (n["fp"] + 10 - 5 * j) / n["empty"]}
                for j, (d, pp) in enumerate(VARIANTS)]
    chosen = next(v for v in variants if v["describe"] == n["post"])
    return {
        "model": model, "parameters": n["parameters"], "part": "oof", "n_folds": 3,
        "n_patients": len(PATIENTS), "folds": fold_rows(folder),
        "train_minutes": n["minutes"],
        "settings": crossval_doc(model, preset, 3, n["epochs"])["settings"],
        "postprocess": chosen["postprocess"], "postprocess_describe": n["post"],
        "postprocess_variants": variants, "without_postprocess": variants[0],
        "dice_patient": {"mean": mean(folder), "median": n["median"], "ci95": n["ci95"],
                         "n": len(PATIENTS), "n_boot": 10000, "seed": 0},
        "dice_global": {"mean": n["global"], "ci95": [n["global"] - 0.05, n["global"] + 0.05]},
        "dice_slice": {"mean": 0.5, "median": 0.4, "n": 300, "tumour_mean": n["tumour"],
                       "tumour_median": 0.7, "n_tumour": 78},
        "hd95": {"mean": n["hd95"], "median": 3.0, "n": 70, "unit": "pixel"},
        "fpr_empty": {"mean": n["fp"] / n["empty"], "n_empty_slices": n["empty"],
                      "n_false_positive_slices": n["fp"], "mean_predicted_pixels": 3.5},
        "per_patient": [{"patient": p, "tp": c[0], "fp": c[1], "fn": c[2], "dice": dice(*c),
                         "slices": 20} for p, c in zip(PATIENTS, COUNTS[folder])],
        "per_slice": [],
    }


def write_model(cv: Path, folder: str) -> None:
    model, preset = MODELS[folder]
    d = cv / folder
    _write(d / "crossval.json", crossval_doc(model, preset, 3, NUMBERS[folder]["epochs"]))
    _write(d / "split.json", {"folds": [PATIENTS[0:3], PATIENTS[3:6], PATIENTS[6:8]]})
    for i in range(3):
        _write(d / f"fold_{i}" / "config.json", {"model": model, "preset": preset, "fold": i,
                                                 "epochs": NUMBERS[folder]["epochs"], "lr": 3e-4})
        _write(d / f"fold_{i}" / "summary.json", {"model": model, "n_patients": 3})
        (d / f"fold_{i}" / "predictions.npz").write_bytes(b"")
    _write(d / "summary.json", summary_doc(folder))
    (d / "predictions.npz").write_bytes(b"")


def write_unfinished(cv: Path) -> None:
    folder, k, done = UNFINISHED
    d = cv / folder
    _write(d / "crossval.json", crossval_doc(folder, "recommended", k, 40))
    for i in range(k):
        _write(d / f"fold_{i}" / "config.json", {"model": folder, "fold": i, "epochs": 40})
        (d / f"fold_{i}" / "metrics.jsonl").write_text(json.dumps({"epoch": 1}) + "\n")
        if i in done:
            _write(d / f"fold_{i}" / "summary.json", {"model": folder})
            (d / f"fold_{i}" / "predictions.npz").write_bytes(b"")


def write_ablation(cv: Path) -> None:
    for name, (change, vals) in ABLATION.items():
        d = cv / "ablation" / name
        _write(d / "config.json", {**BASE_CONFIG, "num_parameters": 123456, **change})
        lines = [json.dumps({"epoch": e, "val_dice": v - 0.02, "val_dice_patient": v,
                             "epoch_time_s": 30.0}) for e, v in enumerate(vals, start=1)]
        (d / "metrics.jsonl").write_text("\n".join(lines) + "\n")


def best_of(name: str) -> tuple[float, int]:
    vals = ABLATION[name][1]
    best = max(vals)
    return best, vals.index(best) + 1


def make_cv(results: Path, *, models=tuple(MODELS), unfinished: bool = True,
            ablation: bool = True, extras: bool = True) -> Path:
    """``results/cv/`` with the chosen pieces; returns the cv folder."""
    cv = results / "cv"
    cv.mkdir(parents=True, exist_ok=True)
    for folder in models:
        write_model(cv, folder)
    if unfinished:
        write_unfinished(cv)
    if ablation:
        write_ablation(cv)
    if extras:
        _write(cv / "machine.json", MACHINE)
        (cv / "notes.md").write_text(NOTES)
    return cv
