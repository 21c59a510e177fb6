"""Every file and folder mambaseg writes goes through here: a reader (or a crash) never sees a
half-written mask, JSON, figure, checkpoint or run folder.

- ``atomic_path(path)`` yields a temporary path in the same folder and moves it onto ``path``
  only when the block succeeds; ``write_text``, ``write_json``, ``save_figure`` and ``save_npz``
  write through it.
- ``atomic_dir(target)`` does the same for a whole folder (checkpoints, shipped ensembles):
  the new folder is written to ``.NAME.tmp``, the old one renamed to ``.NAME.old``, the new one
  renamed into place, the old one deleted; ``recover_dir`` repairs what a crash at any point
  leaves behind, so ``NAME`` is always either the previous complete folder or the new one.
- ``prepare_dir(path)`` creates an output folder and checks that a file can be created in it,
  before a command does any work (the one writability probe).

JSON is always strict: ``json_ready`` turns NaN and infinities into ``null`` (and numpy scalars
into Python ones) before ``to_json`` / ``write_json`` serialise with ``allow_nan=False``, so no
file mambaseg writes holds the bare ``NaN`` / ``Infinity`` that other JSON readers refuse.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from mambaseg.errors import MambasegError


# ----------------------------------------------------------------------------- files

@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it onto ``path`` if the block succeeds.

    The temporary name keeps the suffix (writers that infer the format still work). On any
    exception the temporary file is deleted and the exception propagates; ``path`` is untouched.
    The parent folder is created if needed. ``fsync``: flush the file to disk before the move.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{secrets.token_hex(4)}{path.suffix}")
    try:
        yield tmp
        if fsync:
            _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def write_text(path: str | os.PathLike, text: str, fsync: bool = False) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path, fsync=fsync) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def json_ready(obj: Any) -> Any:
    """``obj`` with NaN/inf floats (not valid JSON) replaced by None, recursively; numpy
    scalars become Python scalars, tuples lists."""
    if isinstance(obj, dict):
        return {k: json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    item = getattr(obj, "item", None)
    if callable(item) and type(obj).__module__ == "numpy" and getattr(obj, "ndim", 1) == 0:
        obj = item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def to_json(obj: Any, indent: int | None = None, default=None) -> str:
    """Strict JSON text of ``obj``: non-finite floats written as null (``json_ready``), never as
    NaN/Infinity. ``default`` as ``json.dumps`` (e.g. ``str`` for paths)."""
    return json.dumps(json_ready(obj), indent=indent, default=default, allow_nan=False)


def write_json(path: str | os.PathLike, obj: Any, indent: int = 2, default=None,
               fsync: bool = False) -> Path:
    """Write ``obj`` as indented strict JSON (``to_json``) to ``path`` atomically."""
    return write_text(path, to_json(obj, indent=indent, default=default) + "\n", fsync=fsync)


def save_figure(fig, path: str | os.PathLike, dpi: float | str = "figure") -> Path:
    """Save a matplotlib figure to ``path`` (format from its suffix) atomically; ``dpi`` as
    matplotlib's ``savefig`` (default: the figure's own)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format=Path(path).suffix.lstrip(".") or "png")
    return Path(path)


def save_npz(path: str | os.PathLike, **arrays) -> Path:
    """Save arrays with ``numpy.savez_compressed`` to ``path`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, **arrays)
    return Path(path)


# ----------------------------------------------------------------------------- folders

def _side_paths(target: Path) -> tuple[Path, Path]:
    return target.with_name(f".{target.name}.tmp"), target.with_name(f".{target.name}.old")


def recover_dir(target: str | os.PathLike) -> None:
    """Repair ``target`` after a crash during :func:`atomic_dir`.

    A leftover temp folder is deleted (it may be incomplete). A leftover ``.old`` folder is put
    back if ``target`` is missing (the crash came between the two renames), else deleted.
    """
    target = Path(target)
    tmp, old = _side_paths(target)
    if tmp.exists():
        shutil.rmtree(tmp)
    if old.exists():
        if target.exists():
            shutil.rmtree(old)
        else:
            os.replace(old, target)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            _fsync_file(path)
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem allows fsync on a folder
        _fsync_file(folder)


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder; when the block succeeds it replaces ``target``."""
    target = Path(target)
    recover_dir(target)
    tmp, old = _side_paths(target)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        _fsync_tree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    _fsync_dir(target.parent)
    if old.exists():
        shutil.rmtree(old)


def prepare_dir(path: str | os.PathLike, what: str = "output directory",
                prefix: str | None = None) -> Path:
    """Create ``path`` (and parents) if needed and check a file can be created in it.

    Raises MambasegError when it cannot (a path under a regular file, a read-only location):
    ``"{what} {path} cannot be created: ..."`` or ``"... is not writable: ..."``, or with
    ``prefix`` ``"{prefix}: {reason}"``. Call it only after every other check passed, so that a
    failed command leaves nothing behind.
    """
    path = Path(path)

    def fail(stage: str, reason: str) -> MambasegError:
        return MambasegError(f"{prefix}: {reason}" if prefix
                             else f"{what} {path} {stage}: {reason}")

    blocker = next((p for p in (path, *path.parents) if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise fail("cannot be created", f"{blocker} is a file, not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise fail("cannot be created", exc.strerror or str(exc)) from None
    try:
        fd, probe = tempfile.mkstemp(prefix=".mambaseg-probe-", dir=path)
    except OSError as exc:
        raise fail("is not writable", exc.strerror or str(exc)) from None
    os.close(fd)
    os.unlink(probe)
    return path
