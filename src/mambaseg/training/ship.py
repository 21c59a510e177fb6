"""Ship a finished cross-validation as an ensemble of its fold models (the package's weights).

    from mambaseg.training.ship import ship_crossval
    ship_crossval("results/cv/ulvm_unet_v6", "src/mambaseg/weights/ulvm_unet_v6_cv5", default=True)

writes an ensemble folder (``inference.loading.save_ensemble``'s format: ``ensemble.json`` +
``fold_<i>/`` checkpoint folders, fp16 by default) from the K fold checkpoints that the
cross-validation evaluated. The manifest's ``postprocess`` is the post-processing the cross-validation chose on
its out-of-fold (OOF) predictions, and its ``metadata`` records the OOF scores::

    {"metrics": {"cv": {"dice_patient": 0.83, "dice_patient_ci95": [...],
                        "dice_patient_median": ..., "dice_global": ..., "n_patients": 110,
                        "n_folds": 5, "val_dice_patient": 0.79, ...}},
     "protocol": "crossval", "evaluated": "results/cv/ulvm_unet_v6/summary.json",
     "training": {"model": ..., "preset": ..., "epochs": ..., ...},
     "data": "LGG (Buda et al. 2019), kaggle_3m, CC BY-NC-SA 4.0", "default": true}

The OOF Dice scores each patient with the one fold model that never saw it: it estimates how
one fold model does on new patients (the ensemble of all K, which saw every patient, cannot be
scored on this dataset without leakage). ``val_dice_patient`` averages the folds' best
validation per-patient Dice (patients carved out of each fold's training patients): shipped
models are ranked by it. ``refresh_metrics`` rewrites these scores from the saved results
alone (no weights), for ensembles shipped before a score was recorded. ``"default": true``
makes it the model that ``predict``, ``segment()`` and ``demo`` use when none is named
(``models.pretrained``).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from mambaseg.errors import MambasegError
from mambaseg.files import atomic_dir, write_json
from mambaseg.inference.ensemble import MANIFEST, read_manifest
from mambaseg.inference.loading import load_checkpoint, save_ensemble
from mambaseg.inference.model_info import model_name
from mambaseg.models.checkpoint import CONFIG_NAME, WEIGHTS_NAME
from mambaseg.models import pretrained
from mambaseg.training.crossval import SETTINGS, SUMMARY, fold_dir

DATA_CREDIT = "LGG (Buda et al. 2019), kaggle_3m, CC BY-NC-SA 4.0"
#: training settings recorded in the shipped metadata (from fold 0's resolved run config)
TRAINING_KEYS = ("model", "preset", "epochs", "batch_size", "lr", "optimizer", "weight_decay",
                 "loss", "scheduler", "warmup_epochs", "augment", "image_size",
                 "tumour_fraction", "select", "checkpoint", "seed", "split_seed", "amp",
                 "model_kwargs", "device_name")


def default_name(cv_dir: str | Path) -> str:
    """``<model>_cv<K>`` for the cross-validation in ``cv_dir`` (e.g. ``ulvm_unet_v6_cv5``)."""
    summary, settings = _read_cv(Path(cv_dir))
    model = summary.get("model") or settings["settings"]["model"]
    return f"{model}_cv{_n_folds(summary, settings)}"


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise MambasegError(f"cannot read {what} {path}: {exc}") from None
    if not isinstance(data, dict):
        raise MambasegError(f"{path} is not a JSON object")
    return data


def _read_cv(cv_dir: Path) -> tuple[dict, dict]:
    """The OOF ``summary.json`` and ``crossval.json`` of a finished cross-validation."""
    if not (cv_dir / SETTINGS).is_file():
        raise MambasegError(f"{cv_dir} is not a cross-validation folder ({SETTINGS} missing; "
                            "run 'mambaseg crossval')")
    if not (cv_dir / SUMMARY).is_file():
        raise MambasegError(f"the cross-validation in {cv_dir} is not finished ({SUMMARY} "
                            "missing): run the folds still to do with 'mambaseg crossval "
                            f"--resume -o {cv_dir}'")
    summary = _read_json(cv_dir / SUMMARY, "the cross-validation summary")
    settings = _read_json(cv_dir / SETTINGS, "the cross-validation settings")
    if summary.get("part") != "oof" or not isinstance(summary.get("dice_patient"), dict):
        raise MambasegError(f"{cv_dir / SUMMARY} is not an out-of-fold cross-validation summary")
    return summary, settings


def _n_folds(summary: dict, settings: dict) -> int:
    k = summary.get("n_folds") or settings.get("folds") or len(summary.get("folds") or [])
    if not isinstance(k, int) or k < 1:
        raise MambasegError("the cross-validation summary records no folds")
    return k


def fold_checkpoints(cv_dir: str | Path) -> list[Path]:
    """The checkpoint each fold of the finished cross-validation in ``cv_dir`` was evaluated
    with: the fold row's ``checkpoint`` (looked up inside ``cv_dir`` first, so a moved or
    copied folder works), else the fold's test summary's, else ``fold_<i>/best``, else
    ``fold_<i>/last``. MambasegError naming the first that is missing."""
    cv_dir = Path(cv_dir)
    summary, settings = _read_cv(cv_dir)
    k = _n_folds(summary, settings)
    rows = {r.get("fold"): r for r in summary.get("folds") or [] if isinstance(r, dict)}
    out = []
    for i in range(k):
        d = fold_dir(cv_dir, i)
        recorded = (rows.get(i) or {}).get("checkpoint")
        if not recorded and (d / SUMMARY).is_file():
            recorded = _read_json(d / SUMMARY, f"fold {i}'s test summary").get("checkpoint")
        if recorded:
            candidates = [d / Path(recorded).name, Path(recorded)]
        else:
            candidates = [d / "best", d / "last"]
        found = next((c for c in candidates
                      if (c / CONFIG_NAME).is_file() and (c / WEIGHTS_NAME).is_file()), None)
        if found is None:
            raise MambasegError(f"fold {i}'s checkpoint is missing: looked for "
                                f"{' and '.join(map(str, dict.fromkeys(candidates)))} "
                                f"({CONFIG_NAME} + {WEIGHTS_NAME})")
        out.append(found)
    return out


def _relative(path: Path) -> str:
    """``path`` relative to the working directory, else to the source checkout holding this
    package, when inside either; else its last three parts (no absolute paths of the machine
    that shipped it)."""
    path = path.resolve()
    for base in (Path.cwd().resolve(), Path(__file__).resolve().parents[3]):
        if base in path.parents:
            return path.relative_to(base).as_posix()
    return Path(*path.parts[-3:]).as_posix()


def _training(cv_dir: Path, settings: dict, k: int) -> dict:
    saved = dict(settings.get("settings") or {})
    run_config = fold_dir(cv_dir, 0) / "config.json"     # fold 0's resolved settings
    resolved = _read_json(run_config, "fold 0's run config") if run_config.is_file() else {}
    training = {key: resolved.get(key, saved.get(key)) for key in TRAINING_KEYS
                if key in resolved or key in saved}
    training["folds"] = k
    return training


def cv_metrics(summary: dict, k: int) -> dict:
    """The ``metrics.cv`` entry of the shipped metadata from an OOF summary."""
    dp = summary["dice_patient"]
    dg = summary.get("dice_global") or {}
    raw = summary.get("without_postprocess") or {}
    out = {"dice_patient": dp["mean"], "dice_patient_ci95": dp.get("ci95"),
           "dice_patient_median": dp.get("median"),
           "dice_global": dg.get("mean") if isinstance(dg, dict) else None,
           "n_patients": summary.get("n_patients"), "n_slices": summary.get("n_slices"),
           "n_folds": k,
           "dice_patient_without_postprocess": raw.get("dice_patient"),
           "postprocess": summary.get("postprocess_describe"),
           "fold_dice_patient": [r.get("dice_patient") for r in summary.get("folds") or []]}
    # the validation score: each fold's best validation per-patient Dice (the patients carved
    # out of its training patients), averaged; the shipped models are ranked by it, not by
    # the out-of-fold test scores above
    val = [r.get("best_val") for r in summary.get("folds") or []]
    out["fold_val_dice_patient"] = val
    out["val_dice_patient"] = sum(val) / len(val) if val and None not in val else None
    for key in ("dice_paper", "iou"):
        if isinstance(summary.get(key), dict):
            out[key] = summary[key].get("mean")
    return out


def ship_crossval(cv_dir: str | Path, dest: str | Path | None = None,
                  dtype: torch.dtype | None = torch.float16, name: str | None = None, *,
                  default: bool = False, overwrite: bool = False,
                  evaluated: str | None = None) -> Path:
    """Write the K fold models of the finished cross-validation ``cv_dir`` as an ensemble
    folder ``dest`` (see the module docstring); returns ``dest``.

    ``dest`` None: ``<shipped weights folder>/<name>``, ``name`` defaulting to
    ``<model>_cv<K>``. ``dtype``: how the members' weights are stored (fp16 by default; None
    keeps fp32). ``default``: mark it as the default shipped model. ``evaluated``: the summary
    path recorded in the metadata (default: ``cv_dir/summary.json`` relative to the working
    directory). Raises MambasegError before writing anything when the cross-validation is not
    finished, a fold checkpoint is missing, or ``dest`` exists (unless ``overwrite``: it is
    then replaced once the new folder is complete).
    """
    cv_dir = Path(cv_dir)
    summary, settings = _read_cv(cv_dir)
    k = _n_folds(summary, settings)
    ckpts = fold_checkpoints(cv_dir)
    if dest is None:
        dest = pretrained.WEIGHTS_DIR / (name or default_name(cv_dir))
    dest = Path(dest)
    if name is not None and name != dest.name:
        raise MambasegError(f"name {name!r} differs from the folder name of dest ({dest}); "
                            "pass one of them")
    if dest.exists() and not overwrite:
        raise MambasegError(f"{dest} exists; pass overwrite=True (--overwrite) to replace it")
    if dest.exists() and not dest.is_dir():
        raise MambasegError(f"{dest} is a file, not a folder")

    rows = {r.get("fold"): r for r in summary.get("folds") or [] if isinstance(r, dict)}
    members = []
    for i, ckpt in enumerate(ckpts):
        model = load_checkpoint(ckpt, "cpu")
        if summary.get("model") and model_name(model) != summary["model"]:
            raise MambasegError(f"{ckpt} holds a {model_name(model)} model, but the "
                                f"cross-validation trained {summary['model']}")
        meta = dict((model.checkpoint_config or {}).get("metadata") or {})
        training = dict(meta.get("training") or {})
        if "run" in training:                       # no absolute paths of the training host
            training["run"] = f"{cv_dir.name}/fold_{i}"
        row = rows.get(i) or {}
        meta["training"] = training
        meta["crossval"] = {"fold": i, "n_folds": k, "checkpoint": f"fold_{i}/{ckpt.name}",
                            "test": {key: row.get(key) for key in
                                     ("dice_patient", "dice_global", "n_patients", "n_slices")}}
        model.checkpoint_config = {**model.checkpoint_config, "metadata": meta}
        members.append(model)

    metadata = {
        "metrics": {"cv": cv_metrics(summary, k)},
        "protocol": "crossval",
        "evaluated": evaluated or _relative(cv_dir / SUMMARY),
        "training": _training(cv_dir, settings, k),
        "data": DATA_CREDIT,
        "default": bool(default),
        "note": f"OOF Dice: each patient scored by the one of the {k} fold models that never "
                "saw it; the ensemble averages all of them",
    }
    with atomic_dir(dest) as tmp:         # a complete folder, or the old one untouched
        save_ensemble(tmp, members, metadata=metadata, postprocess=summary.get("postprocess"),
                      dtype=dtype)
    return dest


def refresh_metrics(dest: str | Path, cv_dir: str | Path, evaluated: str | None = None) -> Path:
    """Rewrite ``metrics.cv`` (and ``evaluated``) in the manifest of the shipped ensemble
    ``dest`` from the saved results of its cross-validation ``cv_dir`` (``summary.json`` and
    ``crossval.json``; no fold weights needed); weights and post-processing are untouched.
    Raises MambasegError, writing nothing, unless ``cv_dir`` is the cross-validation ``dest``
    was shipped from: the same number of folds, model and out-of-fold per-patient Dice."""
    dest, cv_dir = Path(dest), Path(cv_dir)
    manifest = read_manifest(dest)
    summary, settings = _read_cv(cv_dir)
    k = _n_folds(summary, settings)
    meta = manifest.get("metadata") if isinstance(manifest.get("metadata"), dict) else {}
    old = (meta.get("metrics") or {}).get("cv") or {}
    model = (meta.get("training") or {}).get("model")
    new = cv_metrics(summary, k)
    problems = []
    if len(manifest["members"]) != k:
        problems.append(f"{len(manifest['members'])} members against {k} folds")
    if model and summary.get("model") and model != summary["model"]:
        problems.append(f"model {model} against {summary['model']}")
    if old.get("dice_patient") != new["dice_patient"]:
        problems.append(f"OOF per-patient Dice {old.get('dice_patient')} against "
                        f"{new['dice_patient']}")
    if problems:
        raise MambasegError(f"{cv_dir} is not the cross-validation {dest} was shipped from: "
                            + "; ".join(problems))
    meta = {**meta, "metrics": {**(meta.get("metrics") or {}), "cv": new},
            "evaluated": evaluated or _relative(cv_dir / SUMMARY)}
    write_json(dest / MANIFEST, {**manifest, "metadata": meta})
    return dest
