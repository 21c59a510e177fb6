"""``predictions.npz``: the binary masks an evaluation keeps (``evaluate --save-predictions``,
each cross-validation fold, the out-of-fold result), read back by the cross-validation and the
report's Fig. 3.

The file holds ``rel`` (N,) str (each slice's path relative to the dataset root), ``masks``
(N, H, ceil(W / 8)) uint8 (``np.packbits`` of the {0, 1} masks along the last axis) and
``shape`` (3,) int64 ``(N, H, W)``. Numpy only.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from mambaseg.errors import DataError
from mambaseg.files import save_npz


def predictions_path(out: str | Path) -> Path:
    """Where ``--save-predictions`` writes, beside the summary: ``summary*.json`` ->
    ``predictions*.npz`` (``summary-val.json`` -> ``predictions-val.npz``), else
    ``<stem>-predictions.npz``."""
    out = Path(out)
    if out.stem.startswith("summary"):
        return out.with_name("predictions" + out.stem[len("summary"):] + ".npz")
    return out.with_name(out.stem + "-predictions.npz")


def write_predictions(path: str | Path, rels, packed: np.ndarray, shape) -> Path:
    """Write ``predictions.npz`` atomically: ``rels`` one per slice, ``packed`` the masks as
    ``np.packbits(masks, axis=-1)``, ``shape`` (N, H, W)."""
    return save_npz(path, rel=np.array(list(rels), dtype=str), masks=packed,
                    shape=np.array(shape, dtype=np.int64))


class Predictions:
    """A saved ``predictions.npz``: ``rels``, ``shape`` (N, H, W), ``get(rel)`` one slice's mask
    and ``masks()`` all of them. DataError naming the file when it is not a valid one."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            with np.load(self.path, allow_pickle=False) as z:
                self.rels = [str(r) for r in z["rel"]]
                self.packed = z["masks"]
                self.shape = tuple(int(s) for s in z["shape"])
        except (KeyError, ValueError, OSError) as exc:
            raise DataError(f"{self.path}: not a valid predictions file ({exc})") from exc
        if (len(self.shape) != 3 or self.packed.shape[0] != self.shape[0]
                or len(self.rels) != self.shape[0]):
            raise DataError(f"{self.path}: 'rel', 'masks' and 'shape' {self.shape} disagree")
        self.index = {r: i for i, r in enumerate(self.rels)}

    def __contains__(self, rel: str) -> bool:
        return rel in self.index

    def get(self, rel: str) -> np.ndarray | None:
        """The (H, W) uint8 {0,1} prediction of slice ``rel``, or None if it was not predicted."""
        i = self.index.get(rel)
        if i is None:
            return None
        return np.unpackbits(self.packed[i], axis=-1, count=self.shape[2]).astype(np.uint8)

    def masks(self) -> np.ndarray:
        """Every slice's prediction, uint8 (N, H, W) in {0, 1}."""
        n, h, w = self.shape
        return np.unpackbits(self.packed, axis=-1, count=w).reshape(n, h, w)


def load_predictions(path: str | Path) -> dict[str, np.ndarray]:
    """Read ``predictions.npz`` back: ``{"rel": (N,) str, "masks": uint8 (N, H, W) in {0, 1}}``."""
    pred = Predictions(path)
    return {"rel": np.array(pred.rels, dtype=str), "masks": pred.masks()}
