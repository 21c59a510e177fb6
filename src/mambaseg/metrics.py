"""Segmentation metrics as pure functions (docs/metrics.md gives each exact definition).

``dice_counts`` counts per-slice true/false positives and false negatives of binary masks
(numpy arrays or torch tensors); everything else works on per-slice count arrays ``tp, fp, fn``
(int, shape (N,)) so that every reported number can be recomputed from the tables in
``summary.json``. Convention throughout: a ratio whose denominator is zero (nothing predicted
and nothing to find) counts as a perfect 1.0. ``dice_from_counts`` is the one Dice: the
trainer's validation, evaluation, predict's scores against ground truth and the report use it.

Imports numpy only, so that the torch-free ``predict --onnx`` path scores its masks with it; the
functions given torch tensors (and the distance transforms) use torch where they run.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: slices per batch of the seed's test loader, over which ``dice_paper`` pools
PAPER_BATCH = 16
#: bootstrap resamples and seed used by default
N_BOOT = 10_000
BOOT_SEED = 0


def pooled_dice(probs, targets, threshold: float = 0.5) -> float:
    """Dice pooled over the whole batch: ``2*sum(P*T) / (sum(P)+sum(T))`` with ``P = probs > threshold``.

    ``probs`` and ``targets``: tensors or arrays of one shape; ``targets`` is binary (values
    > 0.5 count as tumour). An empty prediction on an empty target gives 1.0.
    """
    p = _numpy(probs > threshold)
    t = _numpy(targets > 0.5)
    inter = int(np.count_nonzero(p & t))
    return float(dice_from_counts(inter, int(np.count_nonzero(p)) - inter,
                                  int(np.count_nonzero(t)) - inter))


def dice_counts(pred_bin, target) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-sample (tp, fp, fn) pixel counts of binary predictions against binary targets.

    Both arrays (numpy or torch) have shape (N, ...) and are read as booleans (``> 0``); returns
    three int64 arrays of shape (N,). CPU input is counted with numpy (small torch ops are slow
    on a busy CPU), GPU tensors on their device.
    """
    if pred_bin.shape != target.shape:
        raise ValueError(f"prediction shape {tuple(pred_bin.shape)} != target shape "
                         f"{tuple(target.shape)}")
    if any(_is_tensor(a) and a.device.type != "cpu" for a in (pred_bin, target)):
        import torch

        p = (torch.as_tensor(pred_bin) > 0).flatten(1)
        t = (torch.as_tensor(target, device=p.device) > 0).flatten(1)
        counts = torch.stack([(p & t).sum(1), (p & ~t).sum(1), (~p & t).sum(1)]).cpu().numpy()
        return tuple(c.astype(np.int64) for c in counts)
    p = _numpy(pred_bin).reshape(len(pred_bin), -1) > 0
    t = _numpy(target).reshape(len(target), -1) > 0
    tp = np.count_nonzero(p & t, axis=1).astype(np.int64)
    fp = np.count_nonzero(p, axis=1) - tp
    fn = np.count_nonzero(t, axis=1) - tp
    return tp, fp.astype(np.int64), fn.astype(np.int64)


def dice(pred, target) -> float:
    """Dice of two binary masks of one shape (numpy or torch, read as ``> 0``); 1.0 when both
    are empty."""
    tp, fp, fn = dice_counts(_numpy(pred)[None], _numpy(target)[None])
    return float(dice_from_counts(tp, fp, fn)[0])


def _is_tensor(a) -> bool:
    """Whether ``a`` is a torch tensor (without importing torch)."""
    return type(a).__module__.split(".")[0] == "torch"


def _numpy(a) -> np.ndarray:
    return a.detach().cpu().numpy() if _is_tensor(a) else np.asarray(a)


# ----------------------------------------------------------------------------- elementwise

def _ratio(num: np.ndarray, den: np.ndarray, empty: float = 1.0) -> np.ndarray:
    """``num / den`` elementwise, ``empty`` where ``den == 0``."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast(num, den).shape, float(empty))
    np.divide(num, den, out=out, where=den != 0)
    return out


def dice_from_counts(tp, fp, fn) -> np.ndarray:
    """Dice ``2tp / (2tp + fp + fn)`` elementwise; 1.0 where prediction and truth are both empty."""
    tp, fp, fn = (np.asarray(a, dtype=np.int64) for a in (tp, fp, fn))
    return _ratio(2 * tp, 2 * tp + fp + fn)


def _as_counts(tp, fp, fn) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    arrs = tuple(np.asarray(a, dtype=np.int64).reshape(-1) for a in (tp, fp, fn))
    if not (len(arrs[0]) == len(arrs[1]) == len(arrs[2])):
        raise ValueError("tp, fp and fn must have the same length")
    return arrs


# ----------------------------------------------------------------------------- bootstrap

def bootstrap_ratio(num, den, n_boot: int = N_BOOT, seed: int = BOOT_SEED, level: float = 0.95,
                    empty: float = 1.0) -> list[float]:
    """Percentile bootstrap interval of ``sum(num) / sum(den)`` resampling the units (patients).

    ``num`` and ``den`` hold one value per unit; each of ``n_boot`` resamples draws len(num)
    units with replacement (numpy PCG64 seeded with ``seed``). With ``den`` all ones this is the
    bootstrap of a mean. Returns ``[lo, hi]``, the (1-level)/2 and (1+level)/2 percentiles
    (numpy's default linear interpolation); a resample with ``sum(den) == 0`` scores ``empty``.
    """
    num = np.asarray(num, dtype=np.float64).reshape(-1)
    den = np.asarray(den, dtype=np.float64).reshape(-1)
    n = len(num)
    if n == 0:
        return [float("nan"), float("nan")]
    rng = np.random.Generator(np.random.PCG64(seed))
    stats = np.empty(n_boot)
    step = max(1, 2_000_000 // n)  # resamples per chunk: bounded memory
    for start in range(0, n_boot, step):
        stop = min(n_boot, start + step)
        idx = rng.integers(0, n, size=(stop - start, n))
        stats[start:stop] = _ratio(num[idx].sum(1), den[idx].sum(1), empty)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.percentile(stats, [100 * alpha, 100 * (1 - alpha)])
    return [float(lo), float(hi)]


def bootstrap_mean_ci(values, n_boot: int = N_BOOT, seed: int = BOOT_SEED,
                      level: float = 0.95) -> list[float]:
    """Percentile bootstrap interval of the mean of ``values`` (one value per unit)."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    return bootstrap_ratio(values, np.ones_like(values), n_boot, seed, level)


# ----------------------------------------------------------------------------- metrics

def dice_paper(tp, fp, fn, batch_size: int = PAPER_BATCH) -> dict:
    """The seed's table metric: Dice pooled over consecutive batches of ``batch_size`` slices
    (in split order; the last batch may be shorter), then averaged over batches.

    A batch where prediction and truth are both empty scores 1.0 (the seed's code divides 0/0
    there and gets NaN); ``mean_excluding_empty`` leaves such batches out instead.
    """
    tp, fp, fn = _as_counts(tp, fp, fn)
    starts = np.arange(0, len(tp), batch_size)
    if len(starts) == 0:
        return {"mean": float("nan"), "batch_size": batch_size, "n_batches": 0,
                "n_empty_batches": 0, "mean_excluding_empty": float("nan"), "batches": []}
    btp, bfp, bfn = (np.add.reduceat(a, starts) for a in (tp, fp, fn))
    per_batch = dice_from_counts(btp, bfp, bfn)
    empty = (2 * btp + bfp + bfn) == 0
    return {
        "mean": float(per_batch.mean()),
        "batch_size": int(batch_size),
        "n_batches": int(len(per_batch)),
        "n_empty_batches": int(empty.sum()),
        "mean_excluding_empty": float(per_batch[~empty].mean()) if (~empty).any() else float("nan"),
        "batches": [float(v) for v in per_batch],
    }


def dice_slice(tp, fp, fn) -> dict:
    """Per-slice Dice (both empty = 1) averaged over all slices, and over tumour slices only."""
    tp, fp, fn = _as_counts(tp, fp, fn)
    d = dice_from_counts(tp, fp, fn)
    tumour = (tp + fn) > 0
    return {
        "mean": float(d.mean()) if len(d) else float("nan"),
        "median": float(np.median(d)) if len(d) else float("nan"),
        "n": int(len(d)),
        "tumour_mean": float(d[tumour].mean()) if tumour.any() else float("nan"),
        "tumour_median": float(np.median(d[tumour])) if tumour.any() else float("nan"),
        "n_tumour": int(tumour.sum()),
    }


def group_counts(tp, fp, fn, groups: Sequence[str]) -> tuple[list[str], np.ndarray, np.ndarray,
                                                             np.ndarray, np.ndarray]:
    """Sum per-slice counts per group (patient), groups in order of first appearance.

    Returns ``(names, tp, fp, fn, n_slices)`` with one entry per group.
    """
    tp, fp, fn = _as_counts(tp, fp, fn)
    if len(groups) != len(tp):
        raise ValueError("one group name per slice is needed")
    names = list(dict.fromkeys(groups))
    index = {g: i for i, g in enumerate(names)}
    ids = np.fromiter((index[g] for g in groups), dtype=np.int64, count=len(groups))
    sums = [np.bincount(ids, weights=a, minlength=len(names)).astype(np.int64) for a in (tp, fp, fn)]
    slices = np.bincount(ids, minlength=len(names)).astype(np.int64)
    return names, sums[0], sums[1], sums[2], slices


def dice_patient(tp, fp, fn, patients: Sequence[str], n_boot: int = N_BOOT,
                 seed: int = BOOT_SEED) -> dict:
    """Per-patient volumetric Dice (all slices of a patient pooled), as in Buda et al. 2019:
    mean and median over patients, with a percentile-bootstrap 95 % interval of the mean."""
    names, ptp, pfp, pfn, _ = group_counts(tp, fp, fn, patients)
    d = dice_from_counts(ptp, pfp, pfn)
    return {
        "mean": float(d.mean()) if len(d) else float("nan"),
        "median": float(np.median(d)) if len(d) else float("nan"),
        "ci95": bootstrap_mean_ci(d, n_boot, seed),
        "n": int(len(d)),
        "n_boot": int(n_boot),
        "seed": int(seed),
    }


def global_scores(tp, fp, fn, patients: Sequence[str] | None = None, n_boot: int = N_BOOT,
                  seed: int = BOOT_SEED) -> dict[str, dict]:
    """Metrics of all pixels pooled: ``dice_global``, ``iou``, ``precision``, ``recall``.

    Each value is under ``mean`` (the pooled ratio); with ``patients`` given, ``ci95`` is a
    percentile bootstrap over patients (each resample pools the counts of the drawn patients).
    Empty denominators score 1.0 only when the other error count is 0 too (nothing to find and
    nothing predicted), else 0.0.
    """
    tp, fp, fn = _as_counts(tp, fp, fn)
    T, F, N = int(tp.sum()), int(fp.sum()), int(fn.sum())
    defs = {  # name: (numerator, denominator, value when the denominator is 0)
        "dice_global": (2 * tp, 2 * tp + fp + fn, 1.0),
        "iou": (tp, tp + fp + fn, 1.0),
        "precision": (tp, tp + fp, 1.0 if N == 0 else 0.0),
        "recall": (tp, tp + fn, 1.0 if F == 0 else 0.0),
    }
    groups = None
    if patients is not None:
        _, ptp, pfp, pfn, _ = group_counts(tp, fp, fn, patients)
        groups = {"dice_global": (2 * ptp, 2 * ptp + pfp + pfn), "iou": (ptp, ptp + pfp + pfn),
                  "precision": (ptp, ptp + pfp), "recall": (ptp, ptp + pfn)}
    out = {}
    for name, (num, den, empty) in defs.items():
        entry = {"mean": float(_ratio(num.sum(), den.sum(), empty)), "tp": T, "fp": F, "fn": N}
        if groups is not None:
            entry["ci95"] = bootstrap_ratio(*groups[name], n_boot=n_boot, seed=seed, empty=empty)
        out[name] = entry
    return out


def fpr_empty(tp, fp, fn) -> dict:
    """False positives on tumour-free slices (``tp + fn == 0``): the fraction of such slices
    with any predicted pixel (``mean``) and the mean number of predicted pixels on them."""
    tp, fp, fn = _as_counts(tp, fp, fn)
    empty = (tp + fn) == 0
    n = int(empty.sum())
    return {
        "mean": float((fp[empty] > 0).mean()) if n else float("nan"),
        "n_empty_slices": n,
        "n_false_positive_slices": int((fp[empty] > 0).sum()),
        "mean_predicted_pixels": float(fp[empty].mean()) if n else float("nan"),
    }


#: the HD95 keys of summary.json and the definition each holds (docs/metrics.md, "HD95")
HD95_DEFINITIONS = {
    "hd95": "max_directed",    # max of the two directed 95th percentiles (MONAI, surface-distance)
    "hd95_pooled": "pooled",   # 95th percentile of both directed sets pooled (medpy)
}


def hd95_summary(hd: Sequence[float | None], tp, fp, fn, definition: str | None = None) -> dict:
    """Summarise per-slice HD95 values (``None``/NaN where not computed) over tumour slices.

    HD95 is defined only where prediction and truth are both non-empty; tumour slices with an
    empty prediction are counted in ``n_empty_prediction`` (they have no distance).
    ``definition`` (a value of :data:`HD95_DEFINITIONS`), when given, is recorded as is.
    """
    tp, fp, fn = _as_counts(tp, fp, fn)
    h = np.array([np.nan if v is None else float(v) for v in hd], dtype=np.float64)
    tumour = (tp + fn) > 0
    pred = (tp + fp) > 0
    ok = tumour & pred & ~np.isnan(h)
    vals = h[ok]
    out = {
        "mean": float(vals.mean()) if len(vals) else float("nan"),
        "median": float(np.median(vals)) if len(vals) else float("nan"),
        "n": int(ok.sum()),
        "n_tumour_slices": int(tumour.sum()),
        "n_empty_prediction": int((tumour & ~pred).sum()),
        "unit": "pixel",
    }
    if definition is not None:
        out["definition"] = definition
    return out


def summarize(tp, fp, fn, patients: Sequence[str], hd: Sequence[float | None] | None = None,
              batch_size: int = PAPER_BATCH, n_boot: int = N_BOOT, seed: int = BOOT_SEED,
              hd_pooled: Sequence[float | None] | None = None) -> dict:
    """All metrics of one evaluation from per-slice counts (slices in split order).

    Returns a dict with one key per metric: ``dice_paper``, ``dice_slice``, ``dice_patient``,
    ``dice_global``, ``iou``, ``precision``, ``recall``, ``hd95`` (when ``hd``, the per-slice
    :func:`hd95` values, is given), ``hd95_pooled`` (when ``hd_pooled``, the per-slice
    :func:`hd95_pooled` values, is given) and ``fpr_empty``; each HD95 entry records its
    ``definition`` (:data:`HD95_DEFINITIONS`).
    """
    out = {
        "dice_paper": dice_paper(tp, fp, fn, batch_size),
        "dice_slice": dice_slice(tp, fp, fn),
        "dice_patient": dice_patient(tp, fp, fn, patients, n_boot, seed),
    }
    out.update(global_scores(tp, fp, fn, patients, n_boot, seed))
    for key, values in (("hd95", hd), ("hd95_pooled", hd_pooled)):
        if values is not None:
            out[key] = hd95_summary(values, tp, fp, fn, HD95_DEFINITIONS[key])
    out["fpr_empty"] = fpr_empty(tp, fp, fn)
    return out


# ----------------------------------------------------------------------------- distances

def boundary(mask) -> np.ndarray:
    """Boundary pixels (bool numpy array) of a 2-D binary mask: mask pixels with a 4-neighbour
    outside the mask (pixels on the image edge count as having an outside neighbour)."""
    m = _numpy(mask) > 0
    p = np.pad(m, 1)
    inner = p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return m & ~inner


def distance_to(mask):
    """Exact Euclidean distance (a float32 torch tensor) from every pixel to the nearest True
    pixel of ``mask`` (H, W).

    Two separable brute-force passes (columns then rows), O(H*W*(H+W)); ``inf`` everywhere if
    the mask is empty.
    """
    import torch

    m = torch.as_tensor(mask) > 0
    h, w = m.shape
    inf = float(h * h + w * w + 1)
    r = torch.arange(h, dtype=torch.float32)
    # g2[i, j]: squared vertical distance from (i, j) to the nearest True pixel in column j
    dv = (r[:, None] - r[None, :]) ** 2                                 # (i, k)
    g2 = torch.where(m[None, :, :], dv[:, :, None], torch.tensor(inf)).amin(1)  # (i, j)
    c = torch.arange(w, dtype=torch.float32)
    dh = (c[:, None] - c[None, :]) ** 2                                 # (j, k)
    d2 = (g2[:, None, :] + dh[None, :, :]).amin(2)                      # (i, j)
    d = d2.sqrt()
    d[d2 >= inf] = float("inf")
    return d


def _directed(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """For each True pixel of ``src``, the distance to the nearest True pixel of ``dst``."""
    import torch

    a = np.argwhere(src).astype(np.float32)
    b = np.argwhere(dst).astype(np.float32)
    if len(a) * len(b) <= 4_000_000:
        return torch.cdist(torch.from_numpy(a), torch.from_numpy(b)).amin(1).numpy()
    return distance_to(torch.from_numpy(dst))[torch.from_numpy(src)].numpy()


def surface_distances(pred: np.ndarray, target: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray] | None:
    """The two directed boundary-distance sets of two 2-D binary masks (pixels, float64):
    from each boundary pixel of ``pred`` to the nearest boundary pixel of ``target``, and from
    each boundary pixel of ``target`` to the nearest one of ``pred``.

    Returns ``None`` when either mask is empty (no distance exists).
    """
    p = _numpy(pred).squeeze() > 0
    t = _numpy(target).squeeze() > 0
    if p.shape != t.shape or p.ndim != 2:
        raise ValueError(f"hd95 needs two 2-D masks of one shape, got {p.shape}, {t.shape}")
    if not p.any() or not t.any():
        return None
    bp, bt = boundary(p), boundary(t)
    return _directed(bp, bt).astype(np.float64), _directed(bt, bp).astype(np.float64)


def hd95_from_distances(d_pt: np.ndarray, d_tp: np.ndarray) -> float:
    """HD95 as MONAI and surface-distance define it: the larger of the two directed 95th
    percentiles (numpy linear interpolation) of the distance sets of :func:`surface_distances`."""
    return float(max(np.percentile(d_pt, 95), np.percentile(d_tp, 95)))


def hd95_pooled_from_distances(d_pt: np.ndarray, d_tp: np.ndarray) -> float:
    """HD95 as medpy defines it: the 95th percentile (numpy linear interpolation) of the two
    directed distance sets of :func:`surface_distances` pooled into one."""
    return float(np.percentile(np.concatenate([d_pt, d_tp]), 95))


def hd95_both(pred: np.ndarray, target: np.ndarray
              ) -> tuple[float | None, float | None]:
    """``(hd95(pred, target), hd95_pooled(pred, target))`` from one distance computation;
    ``(None, None)`` when either mask is empty."""
    d = surface_distances(pred, target)
    if d is None:
        return None, None
    return hd95_from_distances(*d), hd95_pooled_from_distances(*d)


def hd95(pred: np.ndarray, target: np.ndarray) -> float | None:
    """95th-percentile symmetric Hausdorff distance (pixels) between the boundaries of two
    2-D binary masks, as MONAI's ``compute_hausdorff_distance(percentile=95)`` and DeepMind
    surface-distance's ``compute_robust_hausdorff(..., 95)`` define it: the larger of the two
    directed 95th percentiles (see :func:`hd95_from_distances`).

    Returns ``None`` when either mask is empty (the distance is undefined).
    """
    return hd95_both(pred, target)[0]


def hd95_pooled(pred: np.ndarray, target: np.ndarray
                ) -> float | None:
    """95th-percentile symmetric Hausdorff distance (pixels) as medpy's ``hd95`` defines it:
    the 95th percentile of the distances of both directions pooled (see
    :func:`hd95_pooled_from_distances`). ``None`` when either mask is empty."""
    return hd95_both(pred, target)[1]
