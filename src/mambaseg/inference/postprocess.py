"""Post-processing of binary masks: a 3-D connected-component filter per patient volume and a
minimum-area filter per slice (scipy.ndimage).

Both work on a stack of predicted masks ``(N, H, W)`` with one group name (patient) per slice.
The slices of a group, in the order given, are stacked into a volume (the caller passes them in
slice order, as splits and ``predict`` do). ``PostProcess()`` (both off) returns the masks as
they are. ``resolve_postprocess`` turns a ``postprocess`` argument of evaluate / predict
(``"auto"``: what the checkpoint recommends) into a PostProcess. Numpy and scipy only: the
torch-free ``predict --onnx`` uses it too.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from mambaseg.errors import CheckpointError, MambasegError


@dataclass(frozen=True)
class PostProcess:
    """What to do to a patient's predicted masks.

    ``lcc``: label the volume's 3-D connected components (26-connectivity) and keep the largest,
    plus every other component of at least ``min_volume`` voxels (``min_volume=0`` with
    ``lcc``: the largest only). ``min_area``: then empty every slice with fewer than
    ``min_area`` predicted pixels (0: off).
    """

    lcc: bool = False
    min_volume: int = 0
    min_area: int = 0

    def __post_init__(self) -> None:
        if int(self.min_volume) < 0 or int(self.min_area) < 0:
            raise MambasegError(f"post-processing sizes must be >= 0, got min_volume="
                                f"{self.min_volume}, min_area={self.min_area}")
        if self.min_volume and not self.lcc:
            raise MambasegError("min_volume applies to the 3-D component filter: set lcc too")

    @property
    def active(self) -> bool:
        return bool(self.lcc or self.min_area)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "PostProcess":
        """From ``to_dict``'s output (None or {} -> no post-processing); unknown keys are an
        error."""
        data = dict(data or {})
        unknown = set(data) - {"lcc", "min_volume", "min_area"}
        if unknown:
            raise MambasegError(f"unknown post-processing setting(s): {', '.join(sorted(unknown))}")
        return cls(lcc=bool(data.get("lcc", False)), min_volume=int(data.get("min_volume", 0)),
                   min_area=int(data.get("min_area", 0)))

    def describe(self) -> str:
        parts = []
        if self.lcc:
            parts.append("3-D largest component" + (f" + components >= {self.min_volume} voxels"
                                                    if self.min_volume else ""))
        if self.min_area:
            parts.append(f"slices with < {self.min_area} px emptied")
        return ", ".join(parts) or "none"

    def __call__(self, masks: np.ndarray, groups: Sequence[str]) -> np.ndarray:
        return apply(masks, groups, self)


def keep_components(volume: np.ndarray, min_volume: int = 0) -> np.ndarray:
    """``volume`` (bool, any dimension) with only its largest connected component (full
    connectivity: 26 in 3-D) and the components of at least ``min_volume`` voxels."""
    volume = np.asarray(volume, dtype=bool)
    labels, n = ndimage.label(volume, structure=np.ones((3,) * volume.ndim, dtype=bool))
    if n <= 1:
        return volume.copy()
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    sizes[0] = 0
    keep = sizes >= max(int(min_volume), 1) if min_volume else np.zeros(n + 1, dtype=bool)
    keep[int(np.argmax(sizes))] = True
    keep[0] = False
    return keep[labels]


def remove_small_slices(masks: np.ndarray, min_area: int) -> np.ndarray:
    """``masks`` (N, H, W) with every slice of fewer than ``min_area`` True pixels emptied."""
    masks = np.asarray(masks, dtype=bool)
    area = masks.reshape(len(masks), -1).sum(1)
    out = masks.copy()
    out[(area > 0) & (area < int(min_area))] = False
    return out


def apply(masks: np.ndarray, groups: Sequence[str], pp: PostProcess) -> np.ndarray:
    """Post-process predicted ``masks`` (N, H, W; read as bool) whose slice ``i`` belongs to
    volume ``groups[i]``; returns a new bool array of the same shape."""
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"masks must be (N, H, W), got shape {masks.shape}")
    if len(groups) != len(masks):
        raise ValueError(f"{len(masks)} masks but {len(groups)} group names")
    out = masks > 0
    if not pp.active:
        return out.copy()
    if pp.lcc:
        out = out.copy()
        index: dict[str, list[int]] = {}
        for i, g in enumerate(groups):
            index.setdefault(g, []).append(i)
        for rows in index.values():
            out[rows] = keep_components(out[rows], pp.min_volume)
    if pp.min_area:
        out = remove_small_slices(out, pp.min_area)
    return out


def postprocess_masks(masks: Sequence[np.ndarray], groups: Sequence[str],
                      pp: PostProcess | None) -> list[np.ndarray]:
    """``pp`` applied to 2-D ``masks`` (bool; sizes may differ): the masks of one group and one
    size form one volume. Returns the masks unchanged when ``pp`` is None or inactive."""
    out = [np.asarray(m, dtype=bool) for m in masks]
    if pp is None or not pp.active:
        return out
    volumes: dict[tuple, list[int]] = {}
    for i, (m, g) in enumerate(zip(out, groups)):
        volumes.setdefault((g, m.shape), []).append(i)
    for (g, _), rows in volumes.items():
        done = pp(np.stack([out[i] for i in rows]), [g] * len(rows))
        for i, m in zip(rows, done):
            out[i] = m
    return out


def recommended_postprocess(model):
    """The post-processing a loaded checkpoint recommends: an ensemble folder's ``postprocess``
    entry, else ``metadata.postprocess`` of the checkpoint's config.json; None when it records
    none (an ensemble assembled from several folders recommends none)."""
    pp = getattr(model, "postprocess", None)
    if isinstance(pp, PostProcess):
        return pp
    cfg = getattr(model, "checkpoint_config", None)
    entry = ((cfg.get("metadata") or {}).get("postprocess")) if isinstance(cfg, dict) else None
    if not entry:
        return None
    try:
        return PostProcess.from_dict(entry)
    except (MambasegError, TypeError, ValueError) as exc:
        raise CheckpointError(f"the checkpoint's metadata.postprocess is invalid: {exc}") from None


def resolve_postprocess(setting, model):
    """``(PostProcess, source)`` for a ``postprocess`` argument of evaluate / predict.

    ``"auto"``: the checkpoint's recommendation (source ``"checkpoint"``), else none
    (``"none"``); None: none; a PostProcess or its dict: as given (``"options"``).
    """
    if isinstance(setting, str):
        if setting != "auto":
            raise MambasegError(f"postprocess must be 'auto', None or a PostProcess, "
                                f"got {setting!r}")
        rec = recommended_postprocess(model)
        return (rec, "checkpoint") if rec is not None and rec.active else (PostProcess(), "none")
    if setting is None:
        return PostProcess(), "none"
    if isinstance(setting, dict):
        setting = PostProcess.from_dict(setting)
    return setting, "options"
