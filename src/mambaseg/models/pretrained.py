"""Trained weights shipped inside the package, under ``mambaseg/weights/<name>/``.

Each folder is either a checkpoint directory (``config.json`` + ``model.safetensors``, usually
fp16) whose config ``metadata`` holds the test metrics, conventionally
``{"metrics": {"test": {"dice": 0.91, "iou": 0.84, ...}}, ...}``, or an ensemble folder
(``ensemble.json`` + one checkpoint folder per member; see ``inference.ensemble`` and
``training.ship``) whose manifest ``metadata`` holds the out-of-fold cross-validation metrics,
``{"metrics": {"cv": {"dice_patient": 0.83, "n_patients": 110, "n_folds": 5, ...}}, ...}``.

The default shipped model (the one ``predict``, ``segment()`` and ``demo`` use when none is
named; ``default_shipped``) is the entry whose metadata says ``"default": true``; else the one
with the highest validation score (``metrics.cv.val_dice_patient``: the mean over the folds of
the validation per-patient Dice, on patients carved out of each fold's training patients); else
the highest cross-validation Dice; else the highest test Dice. Models are chosen on validation
data first: the cross-validation and test Dice are test scores.

With no model named, ``predict``, ``segment()`` and ``segment_volume()`` run the shipped model
that takes the input's channels (``shipped_for``): three (RGB slices, a three-channel volume)
the default one; one (a grayscale slice, a FLAIR volume) a FLAIR-only one (its config records
its channels as ``train --channels flair`` writes them; ``data.channels.checkpoint_channels``),
preferably the default's own network trained on FLAIR (``shipped_with``).

This module only finds and describes them (reading their JSON); ``inference.loading.load_shipped``
loads one.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from mambaseg.data.channels import LGG_CHANNELS, checkpoint_channels
from mambaseg.errors import DataError, MambasegError
from mambaseg.models.checkpoint import CONFIG_NAME, WEIGHTS_NAME

#: where shipped weights live (a module attribute so tests can point it elsewhere)
WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
#: the manifest of an ensemble folder (``inference.ensemble.MANIFEST``)
ENSEMBLE_MANIFEST = "ensemble.json"


def metric(config: dict, name: str = "dice", split: str = "test") -> float | None:
    """A metric from a checkpoint config's metadata, e.g. the test Dice; None if not recorded."""
    meta = config.get("metadata") or {}
    candidates = [
        (meta.get("metrics") or {}).get(split, {}),
        meta.get(f"{split}_metrics") or {},
        meta.get(split) or {},
    ]
    for table in candidates:
        if isinstance(table, dict) and isinstance(table.get(name), (int, float)):
            return float(table[name])
    for table in (meta, meta.get("metrics") or {}):
        value = table.get(f"{split}_{name}") if isinstance(table, dict) else None
        if isinstance(value, (int, float)):
            return float(value)
    return None


def _cv(meta: dict) -> dict:
    table = (meta.get("metrics") or {}).get("cv") if isinstance(meta, dict) else None
    return table if isinstance(table, dict) else {}


def _read_checkpoint(folder: Path) -> dict | None:
    """A checkpoint folder's config (None, with a warning naming it, when unusable)."""
    config_path, weights_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    if not (config_path.is_file() and weights_path.is_file()):
        return None
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
        if not isinstance(config["model_name"], str):
            raise TypeError("model_name is not a string")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        warnings.warn(f"ignoring shipped weights {folder}: unreadable {CONFIG_NAME} ({exc})",
                      stacklevel=3)
        return None
    return config


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
        else None


def _entry(folder: Path, config: dict, meta: dict, members: int) -> dict[str, Any]:
    cv = _cv(meta)
    cv_dice = cv.get("dice_patient", cv.get("dice"))
    return {
        "path": folder,
        "kind": "ensemble" if members > 1 or (folder / ENSEMBLE_MANIFEST).is_file()
        else "checkpoint",
        "model_name": config["model_name"],
        "model_kwargs": config.get("model_kwargs") or {},
        "test_dice": metric({"metadata": meta}, "dice"),
        "cv_dice": _number(cv_dice),
        "val_dice": _number(cv.get("val_dice_patient")),
        "cv_patients": cv.get("n_patients"),
        "cv_folds": cv.get("n_folds"),
        "metrics": meta.get("metrics", {}),
        "num_parameters": config.get("num_parameters"),
        "channels": checkpoint_channels(config, int(config.get("in_channels") or 3)),
        "members": members,
        "weights_dtype": config.get("weights_dtype"),
        "preprocessing": config.get("preprocessing") or {},
        "default": meta.get("default") is True,
        "evaluated": meta.get("evaluated"),
    }


def _ensemble_entry(folder: Path) -> dict[str, Any] | None:
    try:
        manifest = json.loads((folder / ENSEMBLE_MANIFEST).read_text(encoding="utf-8"))
        members = manifest["members"]
        if manifest.get("format") != "mambaseg-ensemble" or not isinstance(members, list) \
                or not members or not all(isinstance(m, str) and m for m in members):
            raise ValueError("not a mambaseg ensemble manifest with a list of members")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        warnings.warn(f"ignoring shipped ensemble {folder}: unreadable {ENSEMBLE_MANIFEST} "
                      f"({exc})", stacklevel=3)
        return None
    configs = []
    for m in members:
        config = _read_checkpoint(folder / m)
        if config is None:
            warnings.warn(f"ignoring shipped ensemble {folder}: member {m!r} is not a "
                          f"checkpoint folder ({CONFIG_NAME} + {WEIGHTS_NAME})", stacklevel=3)
            return None
        configs.append(config)
    names = list(dict.fromkeys(c["model_name"] for c in configs))
    first = dict(configs[0], model_name="+".join(names))
    meta = manifest.get("metadata") if isinstance(manifest.get("metadata"), dict) else {}
    entry = _entry(folder, first, meta, len(members))
    entry["postprocess"] = manifest.get("postprocess")
    return entry


def shipped_models(root: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """Shipped weights by folder name: ``{name: {"path", "kind" ("checkpoint" or "ensemble"),
    "model_name", "model_kwargs", "test_dice", "cv_dice", "val_dice", "cv_patients", "cv_folds",
    "metrics", "num_parameters" (of one member), "channels" (their names; None when unknown),
    "members" (1 for a checkpoint), "weights_dtype", "preprocessing", "default",
    "evaluated"}}`` (empty when the package ships none). ``cv_dice`` is the out-of-fold
    per-patient Dice of a cross-validation (``metadata.metrics.cv.dice_patient``), ``val_dice``
    its folds' mean validation per-patient Dice (``metadata.metrics.cv.val_dice_patient``),
    ``test_dice`` a held-out test Dice (``metadata.metrics.test.dice``); None when not recorded.
    """
    root = Path(root) if root is not None else WEIGHTS_DIR
    found: dict[str, dict[str, Any]] = {}
    if not root.is_dir():
        return found
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if (folder / ENSEMBLE_MANIFEST).is_file():
            entry = _ensemble_entry(folder)
        else:
            config = _read_checkpoint(folder)
            entry = _entry(folder, config, config.get("metadata") or {}, 1) \
                if config is not None else None
        if entry is not None:
            found[folder.name] = entry
    return found


def default_shipped(root: str | Path | None = None) -> str | None:
    """Name of the default shipped model (``predict``, ``segment()`` and ``demo`` use it when no
    model is named): the entry whose metadata says ``"default": true`` (the best scored if
    several do), else the best scored: the highest validation score, else the highest
    cross-validation Dice, else the highest test Dice; None when none qualifies."""
    return _default_of(shipped_models(root))


#: the scores shipped entries are ranked by, in order: validation first (the others are test scores)
SCORES = ("val_dice", "cv_dice", "test_dice")


def _rank(shipped: dict[str, dict[str, Any]], name: str) -> tuple:
    """Sort key of a shipped entry: its scores in the order of :data:`SCORES`, a recorded score
    above a missing one, then the name."""
    e = shipped[name]
    return tuple(x for k in SCORES for x in (e[k] is not None, e[k] or -1.0)) + (name,)


def _default_of(shipped: dict[str, dict[str, Any]]) -> str | None:
    """``default_shipped`` of the entries ``shipped`` (``shipped_models``)."""
    def best(names):
        scored = [n for n in names if any(shipped[n][k] is not None for k in SCORES)]
        return max(scored, key=lambda n: _rank(shipped, n)) if scored else None

    flagged = [n for n, info in shipped.items() if info["default"]]
    if len(flagged) > 1:
        warnings.warn(f"several shipped models say \"default\": true ({', '.join(flagged)}); "
                      "using the one with the highest validation score", stacklevel=3)
    if flagged:
        return best(flagged) or flagged[0]
    return best(shipped)


def shipped_with(names, root: str | Path | None = None) -> str | None:
    """The shipped model taking the channels ``names`` (case-insensitive): the default one if it
    does; else a version of the default's network (the same model and model options) trained on
    those channels, such as ``mambaseg_s_flair_cv5`` beside ``mambaseg_s_cv5``; else the best
    scored (validation score, then cross-validation, then test Dice); None when none does."""
    return _with(shipped_models(root), names)


def _with(shipped: dict[str, dict[str, Any]], names) -> str | None:
    """``shipped_with`` among the entries ``shipped``."""
    want = [n.lower() for n in names]
    found = [n for n, e in shipped.items() if [c.lower() for c in e["channels"] or ()] == want]
    if not found:
        return None
    default = _default_of(shipped)
    if default in found:
        return default
    twins = [n for n in found if default is not None and _network(shipped[n]) ==
             _network(shipped[default])]
    return max(twins or found, key=lambda n: _rank(shipped, n))


def _network(entry: dict[str, Any]) -> tuple:
    """What makes two shipped entries the same network: model name and model options."""
    return entry["model_name"], json.dumps(entry["model_kwargs"], sort_keys=True)


def shipped_for(channels: int, label, kind: str = "volume") -> str:
    """The shipped model for an input of ``channels`` channels when none is named (predict on
    slices and volumes, ``segment()``, ``segment_volume()``): 3, the one taking the LGG channels
    (else the default: a FLAIR-only default takes their FLAIR; MambasegError when none
    is shipped); 1 (a FLAIR ``kind``: "slice" or
    "volume"), the FLAIR-only one. DataError naming ``label`` when none is shipped."""
    hint = "train one with 'mambaseg train --channels flair' and pass --checkpoint"
    shipped = shipped_models()  # read once: the choice and its messages look at the same entries
    if channels == 3:
        name = _with(shipped, LGG_CHANNELS) or _default_of(shipped)
        if name is None:
            raise MambasegError("no pretrained weights are shipped with this installation; "
                                "pass --checkpoint DIR (a directory written by 'mambaseg train')")
        return name
    three = (f"give RGB slices ({', '.join(LGG_CHANNELS)})" if kind == "slice" else
             f"give all three channels ({', '.join(LGG_CHANNELS)}: CASE_0000..CASE_0002.nii.gz "
             "or one 4-D volume)")
    if channels == 1:
        name = _with(shipped, ("FLAIR",))
        if name is None:
            raise DataError(f"{label}: one channel (a FLAIR {kind}) but no FLAIR-only model is "
                            f"shipped (the default {_default_of(shipped)} takes "
                            f"{', '.join(LGG_CHANNELS)}); {hint}, or {three}")
        return name
    where = " (the last axis of a 4-D volume, or channel files)" if kind == "volume" else ""
    raise DataError(f"{label}: {channels} channels{where}; no model takes {channels}: mambaseg's "
                    f"models take 3 ({', '.join(LGG_CHANNELS)}) or FLAIR alone; {three}")


#: the former name of ``default_shipped`` (it ranked by test Dice only)
best_shipped = default_shipped
