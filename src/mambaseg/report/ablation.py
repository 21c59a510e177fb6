"""The ablation table of ``results/cv/README.md``: single training runs under ``cv/ablation/``.

Each ``ablation/<row>/`` holds ``config.json`` + ``metrics.jsonl`` of one ``mambaseg train`` run;
rows sort by folder name with numbers read as numbers. Each row gives the settings that changed
from the row above, the best and last validation per-patient Dice, GPU minutes, and the CPU
latency of its model from ``ablation/cpu_latency.json`` (``benchmarks/predict.py --json``).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mambaseg.report.collect import Run, load_run, read_json
from mambaseg.report.tables import MISSING, fmt_delta, fmt_dice, fmt_epochs, fmt_int, markdown_table
from mambaseg.report.tables import as_dict as _dict, as_number as _number, fmt_minutes as _minutes

#: the folder of the ablation runs inside results/cv
ABLATION_DIR = "ablation"
ABLATION_HEADER = ["Run", "Params", "Settings", "Changed from the previous row",
                   "Epochs run/planned", "Best val per-patient Dice (epoch)",
                   "Last-epoch val per-patient Dice", "Δ best vs previous row", "GPU minutes",
                   "CPU ms/slice"]
#: CPU latency of the ablation's models (``benchmarks/predict.py --json``), keyed by
#: ``model`` or ``model:key=value,...``
LATENCY_FILE = "cpu_latency.json"
#: config.json keys whose change the ablation table reports, in this order
ABLATION_KEYS = ("model", "augment", "scheduler", "warmup_epochs", "tumour_fraction", "select",
                 "epochs", "lr", "batch_size", "optimizer", "weight_decay", "loss", "image_size",
                 "seed", "model_kwargs")


def load_ablation(cv_dir: Path) -> list[Run] | None:
    """The runs under ``cv_dir/ablation/`` sorted by folder name; None without that folder."""
    root = cv_dir / ABLATION_DIR
    if not root.is_dir():
        return None
    runs = []
    for d in sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
                    key=lambda p: _natural(p.name)):
        run = load_run(d, ABLATION_DIR, d.name)
        if run is not None:
            runs.append(run)
    return runs


def _natural(name: str) -> tuple:
    """Sort key reading digit runs as numbers: r2 < r10."""
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name))


def describe_settings(cfg: dict) -> str:
    """Augmentation, schedule, oversampling and checkpoint selection of a run's config.json."""
    parts = []
    aug = cfg.get("augment")
    parts.append(MISSING if aug is None else ("augmentation" if aug else "no augmentation"))
    sched, warm = cfg.get("scheduler"), cfg.get("warmup_epochs")
    if sched == "cosine":
        parts.append(f"cosine lr, {warm} warm-up epochs" if warm else "cosine lr, no warm-up")
    elif sched is not None:
        parts.append("constant lr" if sched == "none" else f"{sched} lr")
    tf = _number(cfg.get("tumour_fraction"))
    parts.append(f"tumour slices {tf:g} of each epoch" if tf else "no oversampling")
    sel = cfg.get("select")
    if sel is not None:
        parts.append("best by per-patient Dice" if sel == "dice_patient"
                     else "best by pooled Dice" if sel == "dice" else f"best by {sel}")
    return "; ".join(parts)


def _value(v: Any) -> str:
    if isinstance(v, dict):
        return ", ".join(f"{k}={_value(x)}" for k, x in sorted(v.items())) or "none"
    if isinstance(v, bool):
        return "on" if v else "off"
    return "none" if v is None else f"{v:g}" if isinstance(v, float) else str(v)


def changed(prev: dict | None, cfg: dict) -> str:
    if prev is None:
        return "(first row)"
    diffs = [f"{k}: {_value(prev.get(k))} → {_value(cfg.get(k))}" for k in ABLATION_KEYS
             if prev.get(k) != cfg.get(k)]
    return "; ".join(diffs) or "nothing"


def best_val(run: Run) -> tuple[float | None, Any, float | None]:
    """(best val_dice_patient, its epoch, last epoch's val_dice_patient)."""
    best, epoch = None, None
    rows = run.epochs
    for i, r in enumerate(rows):
        v = _number(r.get("val_dice_patient"))
        if v is not None and (best is None or v > best):
            best, epoch = v, r.get("epoch", i + 1)
    last = _number(rows[-1].get("val_dice_patient")) if rows else None
    return best, epoch, last


def model_spec(cfg: dict) -> str:
    """``model`` or ``model:key=value,...`` (sorted keys), as ``benchmarks/predict.py`` names
    a model with options."""
    kwargs = _dict(cfg.get("model_kwargs"))
    opts = ",".join(f"{k}={_value(v)}" for k, v in sorted(kwargs.items()))
    return f"{cfg.get('model')}:{opts}" if opts else str(cfg.get("model"))


def load_latency(cv_dir: Path) -> dict:
    """``ablation/cpu_latency.json`` ({} when absent or not an object)."""
    path = cv_dir / ABLATION_DIR / LATENCY_FILE
    return _dict(read_json(path)) if path.is_file() else {}


def latency_cell(latency: dict, cfg: dict) -> str:
    ms = _number(_dict(latency.get(model_spec(cfg))).get("b1_ms_per_slice"))
    return MISSING if ms is None else f"{ms:.0f}"


def latency_note(latency: dict) -> str:
    first = next((v for v in latency.values() if isinstance(v, dict)), {})
    if not first:
        return (f"CPU ms/slice: not measured (no `{ABLATION_DIR}/{LATENCY_FILE}`; "
                "`benchmarks/predict.py --json` writes it).")
    return (f"CPU ms/slice: median wall milliseconds of one 256×256 slice at batch 1 "
            f"(`benchmarks/predict.py --batches 1 --json`, {first.get('where', '?')}, torch "
            f"{first.get('torch', '?')}; "
            f"`{ABLATION_DIR}/{LATENCY_FILE}`).")


def ablation_section(runs: list[Run] | None, latency: dict | None = None) -> str:
    out = ["## Ablation of the recipe", ""]
    if runs is None:
        out.append(f"No ablation here (no `{ABLATION_DIR}/` folder).")
        return "\n".join(out)
    if not runs:
        out.append(f"`{ABLATION_DIR}/` holds no run yet.")
        return "\n".join(out)
    folds = sorted({str(r.config["fold"]) for r in runs
                    if r.config and r.config.get("fold") is not None})
    fold = ", ".join(folds) if folds else "0"
    rows, prev_cfg, prev_best = [], None, None
    for run in runs:
        cfg = run.config or {}
        best, epoch, last = best_val(run)
        rows.append([
            f"`{run.path.name}` (`{cfg.get('model') or run.model}`)",
            fmt_int(cfg.get("num_parameters")),
            describe_settings(cfg) if cfg else MISSING,
            changed(prev_cfg, cfg) if cfg else MISSING, fmt_epochs(run),
            MISSING if best is None else f"{best:.4f} ({epoch})", fmt_dice(last),
            fmt_delta(None if best is None or prev_best is None else best - prev_best),
            _minutes(None if run.train_time_s is None else run.train_time_s / 60.0),
            latency_cell(latency or {}, cfg),
        ])
        prev_cfg, prev_best = cfg, best
    out += [
        "Single training runs (`mambaseg train`), in the order of their folder names; the third "
        "column says which settings differ from the row above. The scores are the "
        f"validation per-patient Dice on fold {fold}'s *validation* patients (carved out of the "
        "training patients), not on the test fold: they chose the recipe, so they are not a test "
        "result. **Δ** = this row's best minus the previous row's. A run stopped before its "
        "planned epochs is marked *incomplete*: compare it only at equal epochs. GPU minutes are "
        "wall minutes of its epochs on a GPU shared with the other runs of its session. "
        + latency_note(latency or {}), "",
        markdown_table(ABLATION_HEADER, rows),
    ]
    return "\n".join(out)
