"""Paired comparison of two results over the same patients: per-patient Dice, A - B.

``load_per_patient`` reads the ``per_patient`` table of a ``summary.json`` (written by
``mambaseg evaluate`` or ``mambaseg crossval``); ``paired_comparison`` compares two
``{patient: dice}`` dicts (pure: no files, the report generator calls it too);
``compare_paths`` is what ``mambaseg compare`` calls.

The interval is a *paired* percentile bootstrap: each resample draws patients with
replacement and takes the mean of their differences, so A and B are always resampled
together (``metrics.bootstrap_mean_ci`` on the differences). The test is the two-sided
Wilcoxon signed-rank test on the same differences (zero differences dropped, scipy's default).
"""
from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
from scipy.stats import wilcoxon

from mambaseg import metrics
from mambaseg.errors import MambasegError

#: name of the summary file looked for inside a results folder
SUMMARY = "summary.json"
#: largest |dice - dice_from_counts(tp, fp, fn)| accepted in a per_patient row
DICE_TOL = 1e-6
#: significance level of the verdict (and 1 - level of the bootstrap interval)
ALPHA = 0.05


# ----------------------------------------------------------------------------- loading

def summary_path(path: str | Path) -> Path:
    """The summary file of ``path``: ``path/summary.json`` for a folder, ``path`` for a file."""
    path = Path(path)
    if not path.exists():
        raise MambasegError(f"{path} does not exist (give a results folder holding "
                            f"{SUMMARY}, or a {SUMMARY} file)")
    if path.is_dir():
        inner = path / SUMMARY
        if not inner.is_file():
            raise MambasegError(f"{path} has no {SUMMARY} (expected the output of "
                                "'mambaseg evaluate' or 'mambaseg crossval')")
        return inner
    return path


def label_of(path: str | Path) -> str:
    """A short name for a result: its folder's name (``run/last`` for a checkpoint folder
    ``last`` or ``best``), or the file's stem when the file is not called summary.json."""
    path = Path(path)
    if path.is_dir():
        folder = path
    elif path.name == SUMMARY:
        folder = path.parent
    else:
        return path.stem
    if folder.name in ("", ".", ".."):
        folder = folder.resolve()
    if folder.name in ("last", "best") and folder.parent.name:
        return f"{folder.parent.name}/{folder.name}"
    return folder.name or str(folder)


def load_per_patient(path: str | Path) -> tuple[str, dict[str, float]]:
    """Read the per-patient Dice of a results folder or summary file.

    Returns ``(label, {patient: dice})`` in the file's order. The Dice of each row is
    recomputed from its ``tp``, ``fp``, ``fn`` counts (``metrics.dice_from_counts``) and must
    agree with the row's ``dice`` when both are present; a row with only ``dice`` is taken as
    is. Raises :class:`MambasegError` naming the file for a missing path or file, a file that is
    not JSON, a missing or empty ``per_patient`` table, a malformed row or a patient listed twice.
    """
    file = summary_path(path)
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise MambasegError(f"{file} is not a valid JSON file ({exc})") from None
    except OSError as exc:
        raise MambasegError(f"cannot read {file}: {exc.strerror or exc}") from None
    rows = data.get("per_patient") if isinstance(data, dict) else None
    if not isinstance(rows, list):
        raise MambasegError(f"{file} has no per_patient table (expected a summary.json written "
                            "by 'mambaseg evaluate' or 'mambaseg crossval')")
    if not rows:
        raise MambasegError(f"{file}: the per_patient table is empty")
    out: dict[str, float] = {}
    for i, row in enumerate(rows):
        patient, dice = _read_row(file, i, row)
        if patient in out:
            raise MambasegError(f"{file} lists patient {patient} twice in its per_patient table")
        out[patient] = dice
    return label_of(path), out


def _read_row(file: Path, i: int, row) -> tuple[str, float]:
    where = f"{file}: per_patient row {i + 1}"
    if not isinstance(row, dict):
        raise MambasegError(f"{where} is not an object")
    patient = row.get("patient")
    if not isinstance(patient, str) or not patient:
        raise MambasegError(f"{where} has no patient name")
    where = f"{file}: patient {patient}"
    counts = [row.get(k) for k in ("tp", "fp", "fn")]
    have_counts = any(c is not None for c in counts)
    dice = row.get("dice")
    if dice is not None and (isinstance(dice, bool) or not isinstance(dice, (int, float))
                             or not 0.0 <= dice <= 1.0):   # NaN fails the range check too
        raise MambasegError(f"{where} has an invalid dice {dice!r} (expected a number in [0, 1])")
    if have_counts:
        if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts):
            raise MambasegError(f"{where} has invalid counts tp={counts[0]!r}, fp={counts[1]!r}, "
                                f"fn={counts[2]!r} (expected non-negative integers)")
        recomputed = float(metrics.dice_from_counts(*counts))
        if dice is not None and abs(recomputed - dice) > DICE_TOL:
            raise MambasegError(f"{where} has dice {dice} but its counts tp={counts[0]}, "
                                f"fp={counts[1]}, fn={counts[2]} give {recomputed:.6f}")
        return patient, recomputed
    if dice is None:
        raise MambasegError(f"{where} has neither tp/fp/fn counts nor a dice value")
    return patient, float(dice)


# ----------------------------------------------------------------------------- comparing

def patient_mismatch(a: dict, b: dict, name_a: str = "A", name_b: str = "B",
                     show: int = 5) -> str | None:
    """None when ``a`` and ``b`` have the same keys (patients), else a message saying how many
    are only in each and naming up to ``show`` of them."""
    only_a = sorted(set(a) - set(b))
    only_b = sorted(set(b) - set(a))
    if not only_a and not only_b:
        return None

    def few(names):
        more = f", ... ({len(names) - show} more)" if len(names) > show else ""
        return ": " + ", ".join(names[:show]) + more if names else ""

    return (f"the two results cover different patients ({len(set(a) & set(b))} in common): "
            f"{len(only_a)} only in {name_a}{few(only_a)}; {len(only_b)} only in {name_b}"
            f"{few(only_b)}. Compare results over the same patients (same split part, or "
            "cross-validation over the same folds)")


def wilcoxon_p(diff) -> float | None:
    """Two-sided Wilcoxon signed-rank p-value of paired differences (scipy's defaults: zero
    differences dropped, exact distribution for small samples without ties).

    All differences zero gives 1.0 (no evidence of any difference; depending on its version
    scipy raises or warns there, so it is not called). None if scipy gives no finite value.
    """
    d = np.asarray(diff, dtype=np.float64).reshape(-1)
    if not np.any(d != 0):
        return 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            p = float(wilcoxon(d).pvalue)
        except ValueError:
            return None
    return min(p, 1.0) if math.isfinite(p) else None


def paired_comparison(a: dict[str, float], b: dict[str, float], n_boot: int = metrics.N_BOOT,
                      seed: int = metrics.BOOT_SEED) -> dict:
    """Compare per-patient values ``a`` and ``b`` ({patient: dice}) over the same patients.

    Differences are ``a - b`` in sorted patient order (the bootstrap draws do not depend on the
    order of the inputs). Returns a JSON-ready dict: ``n``, ``mean_a``, ``mean_b``,
    ``mean_diff``, ``median_diff``, ``ci95`` (paired percentile bootstrap of the mean
    difference, ``n_boot`` resamples, numpy PCG64 seeded with ``seed``), ``p_wilcoxon``
    (two-sided signed-rank; None if unavailable), ``wins``/``ties``/``losses`` (patients with
    a > b, a == b, a < b), ``verdict`` ("A better" / "B better" when the interval excludes 0,
    else "no significant difference", followed by the CI and p < 0.05 reasons), ``n_boot`` and
    ``seed``. Raises :class:`MambasegError` for different patient sets or fewer than 2 patients.
    """
    msg = patient_mismatch(a, b)
    if msg:
        raise MambasegError(msg)
    if len(a) < 2:
        raise MambasegError(f"a paired comparison needs at least 2 patients, got {len(a)}")
    if n_boot < 1:
        raise MambasegError(f"the number of bootstrap resamples must be at least 1, got {n_boot}")
    patients = sorted(a)
    va = np.array([float(a[p]) for p in patients])
    vb = np.array([float(b[p]) for p in patients])
    if not (np.all(np.isfinite(va)) and np.all(np.isfinite(vb))):
        raise MambasegError("per-patient values must be finite numbers")
    diff = va - vb
    ci = metrics.bootstrap_mean_ci(diff, n_boot=n_boot, seed=seed, level=1.0 - ALPHA)
    p = wilcoxon_p(diff)
    return {
        "n": len(patients),
        "mean_a": float(va.mean()),
        "mean_b": float(vb.mean()),
        "mean_diff": float(diff.mean()),
        "median_diff": float(np.median(diff)),
        "ci95": [float(ci[0]), float(ci[1])],
        "p_wilcoxon": p,
        "wins": int((diff > 0).sum()),
        "ties": int((diff == 0).sum()),
        "losses": int((diff < 0).sum()),
        "verdict": verdict(ci, p),
        "n_boot": int(n_boot),
        "seed": int(seed),
    }


def verdict(ci, p: float | None) -> str:
    """'A better' / 'B better' when the interval ``ci`` of A - B excludes 0, else 'no
    significant difference'; then why, and whether the Wilcoxon p is below 0.05."""
    lo, hi = ci
    if lo > 0:
        head, why = "A better", "95% CI of the mean difference excludes 0"
    elif hi < 0:
        head, why = "B better", "95% CI of the mean difference excludes 0"
    else:
        head, why = "no significant difference", "95% CI of the mean difference includes 0"
    if p is None:
        test = "Wilcoxon p unavailable"
    elif p < ALPHA:
        test = f"Wilcoxon p = {format_p(p)} < {ALPHA}"
    else:
        test = f"Wilcoxon p = {format_p(p)} >= {ALPHA}"
    return f"{head} ({why}; {test})"


def format_p(p: float | None) -> str:
    """A p-value for printing: 4 decimals, or 2 significant digits below 0.001."""
    if p is None:
        return "-"
    return f"{p:.2e}" if 0 < p < 1e-3 else f"{p:.4f}"


def compare_paths(a: str | Path, b: str | Path, n_boot: int = metrics.N_BOOT,
                  seed: int = metrics.BOOT_SEED) -> dict:
    """Load two results (folders or summary.json files) and compare their per-patient Dice.

    Returns ``{"label_a", "label_b", "path_a", "path_b", "metric": "dice_patient"}`` followed by
    the keys of :func:`paired_comparison`. Errors name the files concerned.
    """
    file_a, file_b = summary_path(a), summary_path(b)
    label_a, da = load_per_patient(a)
    label_b, db = load_per_patient(b)
    msg = patient_mismatch(da, db)
    if msg:
        raise MambasegError(f"cannot compare A = {file_a} with B = {file_b}: {msg}")
    for file, d in ((file_a, da), (file_b, db)):
        if len(d) < 2:
            raise MambasegError(f"{file} has {len(d)} patient; a paired comparison needs at "
                                "least 2")
    head = {"label_a": label_a, "label_b": label_b, "path_a": str(file_a),
            "path_b": str(file_b), "metric": "dice_patient"}
    return {**head, **paired_comparison(da, db, n_boot=n_boot, seed=seed)}
