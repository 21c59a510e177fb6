"""Atomic file writes, used for every file mambaseg writes: a reader (or a crash) never sees a
half-written mask, JSON, figure or checkpoint file.

``atomic_path(path)`` yields a temporary path in the same folder and moves it onto ``path`` only
when the block succeeds; the helpers below write text, JSON, figures and ``.npz`` through it.

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
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it onto ``path`` if the block succeeds.

    The temporary name keeps the suffix (writers that infer the format still work). On any
    exception the temporary file is deleted and the exception propagates; ``path`` is untouched.
    The parent folder is created if needed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{secrets.token_hex(4)}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
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


def write_json(path: str | os.PathLike, obj: Any, indent: int = 2, default=None) -> Path:
    """Write ``obj`` as indented strict JSON (``to_json``) to ``path`` atomically."""
    return write_text(path, to_json(obj, indent=indent, default=default) + "\n")


def save_figure(fig, path: str | os.PathLike, dpi: float | str = "figure") -> Path:
    """Save a matplotlib figure to ``path`` (format from its suffix) atomically; ``dpi`` as
    matplotlib's ``savefig`` (default: the figure's own)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format=Path(path).suffix.lstrip(".") or "png")
    return Path(path)


def save_npz(path: str | os.PathLike, **arrays) -> Path:
    """Save arrays with ``numpy.savez_compressed`` to ``path`` atomically."""
    import numpy as np

    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, **arrays)
    return Path(path)
