"""The run folder: refusing to clobber a run, checking it is writable, resuming its settings.

A run folder holds ``config.json`` (fully resolved settings), ``metrics.jsonl``,
``progress.png`` and the checkpoints ``last/`` and ``best/``.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

from mambaseg.errors import CheckpointError, MambasegError
from mambaseg.files import prepare_dir, recover_dir
from mambaseg.training.config import TrainConfig, config_from_dict
from mambaseg.training.train_state import has_train_state

CONFIG = "config.json"
METRICS = "metrics.jsonl"
PROGRESS = "progress.png"
LAST = "last"
BEST = "best"
#: everything a run writes (with the side folders of interrupted checkpoint writes)
RUN_ENTRIES = (CONFIG, METRICS, PROGRESS, LAST, BEST,
               f".{LAST}.tmp", f".{LAST}.old", f".{BEST}.tmp", f".{BEST}.old")
#: settings a resumed run may change; any other explicit setting must match the saved run
RESUME_MAY_CHANGE = ("epochs", "data", "device", "amp", "compile", "cuda_graphs",
                     "channels_last", "val_batch_size", "progress", "checkpoint")
_NOT_SETTINGS = ("out", "resume", "overwrite")


def check_writable(run_dir: Path) -> None:
    """Create ``run_dir`` if needed and check a file can be written there (MambasegError)."""
    prepare_dir(run_dir, prefix=f"cannot write the run to {run_dir}")


def existing_entries(run_dir: Path) -> list[str]:
    """The run files already in ``run_dir``."""
    return [name for name in RUN_ENTRIES if (run_dir / name).exists()]


def check_new_run(run_dir: Path, overwrite: bool) -> None:
    """Refuse to start a new run where one exists, unless ``overwrite``."""
    if run_dir.exists() and not run_dir.is_dir():
        raise MambasegError(f"cannot write the run to {run_dir}: it is a file, not a folder")
    found = existing_entries(run_dir) if run_dir.is_dir() else []
    if found and not overwrite:
        raise MambasegError(f"{run_dir} already holds a training run ({', '.join(found)}); "
                            "pass --resume to continue it or --overwrite to start again")


def clear_run(run_dir: Path) -> None:
    """Delete a previous run's files (only those a run writes)."""
    for name in existing_entries(run_dir):
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


def read_config(run_dir: Path) -> dict[str, Any]:
    path = run_dir / CONFIG
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing; {run_dir} is not a training run") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: unreadable run configuration ({exc})") from None


def resume_config(run_dir: Path, given: TrainConfig) -> TrainConfig:
    """The saved run's settings, updated with the explicitly given ones it may change.

    Raises CheckpointError if there is nothing to resume, MambasegError if an explicit setting
    contradicts the saved run.
    """
    for name in (LAST, BEST):
        recover_dir(run_dir / name)
    if not has_train_state(run_dir / LAST):
        raise CheckpointError(f"--resume: no checkpoint to resume from in {run_dir / LAST} "
                              "(train_state.pt missing); start the run without --resume")
    saved = config_from_dict(read_config(run_dir))
    conflicts = []
    for f in dataclasses.fields(TrainConfig):
        new = getattr(given, f.name)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if f.name in _NOT_SETTINGS or new is None or new == default:
            continue
        old = getattr(saved, f.name)
        if f.name in RESUME_MAY_CHANGE:
            setattr(saved, f.name, new)
        elif normalise(f.name, new) != normalise(f.name, old):
            conflicts.append(f"--{f.name.replace('_', '-')} {new} (the run has {old})")
    if conflicts:
        raise MambasegError(f"{run_dir}: a resumed run keeps its settings; these differ: "
                            + "; ".join(conflicts))
    saved.out, saved.resume, saved.overwrite = given.out, True, False
    return saved


def normalise(name: str, value: Any) -> Any:
    """Paths as absolute strings (data, split files), numbers as floats, for comparisons."""
    if name == "data" and value is not None:
        return str(Path(value).resolve())
    if name == "split" and value is not None and str(value) not in ("paper", "patient"):
        return str(Path(value).resolve())
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return value
