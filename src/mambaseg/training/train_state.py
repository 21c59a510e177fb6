"""A run's checkpoints and the training state needed to resume exactly.

A checkpoint is a folder in the ``save_pretrained`` format (``config.json`` +
``model.safetensors``); ``RUN_DIR/last/`` adds ``train_state.pt`` (optimizer, scheduler, scaler,
epoch, best metric, metric history and every RNG state). Each folder is replaced atomically
(``mambaseg.files.atomic_dir``), so ``last/`` and ``best/`` always hold a complete checkpoint.
"""
from __future__ import annotations

import os
import random
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mambaseg.errors import CheckpointError
from mambaseg.files import atomic_dir, recover_dir

TRAIN_STATE = "train_state.pt"
STATE_FORMAT = 1


# ----------------------------------------------------------------------------- RNG states


def rng_state(device: torch.device, generators: dict[str, torch.Generator]) -> dict[str, Any]:
    """Every random-number state of this process (torch CPU and CUDA, numpy, python, and the
    named explicit generators), in a form ``torch.load(weights_only=True)`` accepts."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss),
                  float(cached)],
        "python": _python_state_to_plain(random.getstate()),
        "generators": {k: g.get_state() for k, g in generators.items()},
    }
    return state


def set_rng_state(state: dict[str, Any], device: torch.device,
                  generators: dict[str, torch.Generator]) -> None:
    """Restore what :func:`rng_state` captured.

    States saved on another kind of device (a CUDA run resumed on the CPU, or the reverse)
    cannot be restored: those generators keep their fresh seeds, with a warning, and the
    resumed run is no longer bitwise identical to an uninterrupted one.
    """
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(_python_state_from_plain(state["python"]))
    skipped = []
    if device.type == "cuda":
        if state.get("cuda") is not None:
            torch.cuda.set_rng_state(state["cuda"], device)
        else:
            skipped.append("cuda")
    for key, gen in generators.items():
        try:
            gen.set_state(state["generators"][key])
        except (KeyError, RuntimeError, ValueError):
            skipped.append(key)
    if skipped:
        warnings.warn(f"random-number states not restored (saved on another device?): "
                      f"{', '.join(skipped)}; the resumed run continues with fresh ones",
                      stacklevel=2)


def _python_state_to_plain(st: tuple) -> list:
    version, internal, gauss = st
    return [version, torch.tensor(internal, dtype=torch.int64), gauss]


def _python_state_from_plain(st: list) -> tuple:
    version, internal, gauss = st
    return (version, tuple(int(v) for v in internal.tolist()), gauss)


# ----------------------------------------------------------------------------- save / load


def save_checkpoint(target: str | os.PathLike, model: torch.nn.Module,
                    metadata: dict[str, Any] | None = None,
                    train_state: dict[str, Any] | None = None) -> Path:
    """Write ``model`` (``save_pretrained``) and optionally ``train_state.pt`` into ``target``,
    atomically replacing any previous checkpoint there."""
    target = Path(target)
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp, metadata=metadata)
        if train_state is not None:
            torch.save(train_state, tmp / TRAIN_STATE)
    return target


def has_train_state(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds a resumable checkpoint (after crash repair)."""
    folder = Path(folder)
    recover_dir(folder)
    return (folder / TRAIN_STATE).is_file() and (folder / "model.safetensors").is_file()


def load_train_state(folder: str | os.PathLike) -> dict[str, Any]:
    """Read ``folder/train_state.pt`` (on the CPU); CheckpointError if missing or unreadable."""
    path = Path(folder) / TRAIN_STATE
    if not path.is_file():
        raise CheckpointError(f"{path}: no training state to resume from")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure means a damaged file
        raise CheckpointError(f"{path}: unreadable training state ({exc})") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path}: not a mambaseg training state (format "
                              f"{state.get('format') if isinstance(state, dict) else '?'})")
    return state
