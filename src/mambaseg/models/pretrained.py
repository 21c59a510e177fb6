"""Trained weights shipped inside the package, under ``mambaseg/weights/<model_name>/``.

Each folder is a checkpoint directory (``config.json`` + ``model.safetensors``, usually fp16)
whose config ``metadata`` holds the test metrics, conventionally
``{"metrics": {"test": {"dice": 0.91, "iou": 0.84, ...}}, ...}``.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from mambaseg.errors import MambasegError
from mambaseg.models.checkpoint import CONFIG_NAME, WEIGHTS_NAME, from_pretrained

#: where shipped weights live (a module attribute so tests can point it elsewhere)
WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"


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


def shipped_models(root: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """Shipped checkpoints by model name: ``{name: {"path", "model_name", "test_dice", "metrics",
    "num_parameters", "weights_dtype"}}`` (empty when the package ships none)."""
    root = Path(root) if root is not None else WEIGHTS_DIR
    found: dict[str, dict[str, Any]] = {}
    if not root.is_dir():
        return found
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        config_path, weights_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
        if not (config_path.is_file() and weights_path.is_file()):
            continue
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
            model_name = config["model_name"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            warnings.warn(f"ignoring shipped weights {folder}: unreadable {CONFIG_NAME} ({exc})", stacklevel=2)
            continue
        meta = config.get("metadata") or {}
        found[folder.name] = {
            "path": folder,
            "model_name": model_name,
            "test_dice": metric(config, "dice"),
            "metrics": meta.get("metrics", {}),
            "num_parameters": config.get("num_parameters"),
            "weights_dtype": config.get("weights_dtype"),
        }
    return found


def load_shipped(name: str, root: str | Path | None = None, **kwargs):
    """The model ``name`` with its shipped trained weights (fp32, eval mode); ``kwargs`` go to
    ``from_pretrained`` (``dtype``, ``device``, ``scan_backend``...)."""
    shipped = shipped_models(root)
    if name not in shipped:
        available = ", ".join(shipped) or "none"
        raise MambasegError(f"no trained weights are shipped for model {name!r} (shipped: {available}); "
                            f"train one with 'mambaseg train' or load a checkpoint directory")
    return from_pretrained(shipped[name]["path"], **kwargs)


def best_shipped(root: str | Path | None = None) -> str | None:
    """Name of the shipped model with the highest test Dice (None if none is shipped or none
    records a test Dice)."""
    scored = [(info["test_dice"], name) for name, info in shipped_models(root).items()
              if info["test_dice"] is not None]
    return max(scored)[1] if scored else None
