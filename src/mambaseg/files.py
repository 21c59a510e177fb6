"""Atomic file writes, used for every file mambaseg writes: a reader (or a crash) never sees a
half-written mask, JSON, figure or checkpoint file.

``atomic_path(path)`` yields a temporary path in the same folder and moves it onto ``path`` only
when the block succeeds; the helpers below write text, JSON, figures and ``.npz`` through it.
"""
from __future__ import annotations

import contextlib
import json
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


def write_json(path: str | os.PathLike, obj: Any, indent: int = 2) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    return write_text(path, json.dumps(obj, indent=indent) + "\n")


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
