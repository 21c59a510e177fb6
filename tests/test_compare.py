"""mambaseg.compare: paired per-patient comparison checked against independent computation."""
from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats

from mambaseg import metrics
from mambaseg.compare import (compare_paths, label_of, load_per_patient,
                                     paired_comparison, patient_mismatch, wilcoxon_p)
from mambaseg.errors import MambasegError

PATIENTS = [f"P{i}" for i in range(6)]
A = dict(zip(PATIENTS, [0.90, 0.80, 0.70, 0.85, 0.60, 0.75]))
B = dict(zip(PATIENTS, [0.85, 0.80, 0.72, 0.70, 0.50, 0.70]))


def test_paired_comparison_against_hand_computation():
    r = paired_comparison(A, B, n_boot=2000, seed=3)
    diffs = [0.05, 0.0, -0.02, 0.15, 0.10, 0.05]       # A - B by hand
    assert r["n"] == 6
    assert r["mean_a"] == pytest.approx(4.60 / 6)
    assert r["mean_b"] == pytest.approx(4.27 / 6)
    assert r["mean_diff"] == pytest.approx(0.33 / 6)
    assert r["median_diff"] == pytest.approx(0.05)     # sorted: -.02 0 .05 .05 .10 .15
    assert (r["wins"], r["ties"], r["losses"]) == (4, 1, 1)
    assert r["p_wilcoxon"] == pytest.approx(stats.wilcoxon(diffs).pvalue)
    lo, hi = r["ci95"]
    assert lo <= r["mean_diff"] <= hi
    # the interval is metrics.bootstrap_mean_ci of the differences in sorted patient order
    ref = metrics.bootstrap_mean_ci(np.array([A[p] - B[p] for p in sorted(A)]), 2000, 3)
    assert r["ci95"] == pytest.approx(ref)
    assert r["n_boot"] == 2000 and r["seed"] == 3
    json.dumps(r)   # JSON-ready


def test_result_does_not_depend_on_input_order_and_flips_with_sides():
    r = paired_comparison(A, B)
    rev = paired_comparison(dict(reversed(list(A.items()))), B)
    assert r == rev
    swapped = paired_comparison(B, A)
    assert swapped["mean_diff"] == pytest.approx(-r["mean_diff"])
    assert swapped["ci95"] == pytest.approx([-r["ci95"][1], -r["ci95"][0]])
    assert (swapped["wins"], swapped["losses"]) == (r["losses"], r["wins"])
    assert swapped["p_wilcoxon"] == pytest.approx(r["p_wilcoxon"])


def test_wilcoxon_textbook_value():
    # all six differences positive: exact two-sided p = 2 / 2**6 = 0.03125
    a = {f"p{i}": 0.5 + 0.01 * i for i in range(1, 7)}
    b = {f"p{i}": 0.5 for i in range(1, 7)}
    assert wilcoxon_p([1, 2, 3, 4, 5, 6]) == pytest.approx(0.03125)
    r = paired_comparison(a, b)
    assert r["p_wilcoxon"] == pytest.approx(0.03125)
    assert r["wins"] == 6
    assert "p = 0.0312" in r["verdict"] and "< 0.05" in r["verdict"]


def test_all_differences_zero():
    r = paired_comparison(A, dict(A))
    assert r["p_wilcoxon"] == 1.0
    assert r["ci95"] == [0.0, 0.0]
    assert (r["wins"], r["ties"], r["losses"]) == (0, 6, 0)
    assert r["verdict"].startswith("no significant difference")
    assert ">= 0.05" in r["verdict"]


def test_constant_difference_gives_a_point_interval():
    d = 0.03
    b = {p: 0.5 + 0.05 * i for i, p in enumerate(PATIENTS)}
    a = {p: v + d for p, v in b.items()}
    r = paired_comparison(a, b)
    assert r["ci95"][0] == pytest.approx(d) and r["ci95"][1] == pytest.approx(d)
    assert r["ci95"][1] - r["ci95"][0] < 1e-12
    varied = paired_comparison(A, B)
    assert varied["ci95"][1] - varied["ci95"][0] > 0.01


def test_paired_bootstrap_differs_from_unpaired():
    rng = np.random.default_rng(0)
    base = rng.uniform(0.1, 0.9, 30)                    # large between-patient spread
    b = {f"p{i}": float(v) for i, v in enumerate(base)}
    a = {k: v + 0.01 for k, v in b.items()}             # small constant improvement
    r = paired_comparison(a, b)
    assert r["ci95"][0] > 0
    assert r["verdict"].startswith("A better")
    assert r["p_wilcoxon"] < 0.05 and "< 0.05" in r["verdict"]
    # an unpaired bootstrap (A and B drawn independently) does not see the difference
    ca = metrics.bootstrap_mean_ci(list(a.values()), seed=1)
    cb = metrics.bootstrap_mean_ci(list(b.values()), seed=2)
    assert ca[0] < cb[1]                                # the two intervals overlap widely
    rb = paired_comparison(b, a)
    assert rb["ci95"][1] < 0 and rb["verdict"].startswith("B better")


def test_no_significant_difference_verdict():
    a = dict(zip(PATIENTS, [0.9, 0.5, 0.8, 0.4, 0.7, 0.6]))
    b = dict(zip(PATIENTS, [0.5, 0.9, 0.4, 0.8, 0.6, 0.7]))
    r = paired_comparison(a, b)
    assert r["ci95"][0] < 0 < r["ci95"][1]
    assert r["verdict"].startswith("no significant difference")


def test_paired_comparison_refuses_bad_input():
    with pytest.raises(MambasegError, match="1 only in A.*P5.*1 only in B.*X9"):
        paired_comparison(A, {**{k: v for k, v in B.items() if k != "P5"}, "X9": 0.5})
    with pytest.raises(MambasegError, match="at least 2 patients"):
        paired_comparison({"p": 0.5}, {"p": 0.4})
    msg = patient_mismatch({f"a{i}": 0 for i in range(9)}, {})
    assert "9 only in A" in msg and "a0, a1, a2, a3, a4, ... (4 more)" in msg


# ----------------------------------------------------------------------------- files

def write_summary(path, dice: dict, counts: bool = True, **extra):
    rows = []
    for p, d in dice.items():
        row = {"patient": p, "dice": d, "slices": 3}
        if counts:   # tp/fp/fn giving exactly this Dice: 2tp / (2tp + fp + fn) with tp = 1000 d
            tp = round(1000 * d)
            row.update(tp=tp, fp=1000 - tp, fn=1000 - tp, dice=tp / 1000)
        rows.append(row)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"model": "unet", "per_patient": rows, **extra}))
    return path


def test_load_per_patient_folder_and_file(tmp_path):
    f = write_summary(tmp_path / "runs" / "unet" / "summary.json", A)
    label, d = load_per_patient(f.parent)
    assert label == "unet" and d == pytest.approx(A)
    label, d = load_per_patient(f)
    assert label == "unet"
    g = write_summary(tmp_path / "other.json", A, counts=False)
    label, d = load_per_patient(g)
    assert label == "other" and d == pytest.approx(A)
    (tmp_path / "run" / "last").mkdir(parents=True)
    assert label_of(tmp_path / "run" / "last") == "run/last"
    assert label_of(tmp_path / "run" / "last" / "summary.json") == "run/last"


def test_load_per_patient_recomputes_from_counts(tmp_path):
    f = tmp_path / "summary.json"
    f.write_text(json.dumps({"per_patient": [
        {"patient": "a", "tp": 3, "fp": 1, "fn": 1},                    # no dice: 6/8
        {"patient": "b", "tp": 0, "fp": 0, "fn": 0, "dice": 1.0}]}))      # both empty
    assert load_per_patient(f)[1] == {"a": 0.75, "b": 1.0}
    f.write_text(json.dumps({"per_patient": [{"patient": "a", "tp": 3, "fp": 1, "fn": 1,
                                              "dice": 0.5}]}))
    with pytest.raises(MambasegError, match=r"patient a has dice 0.5 but .* give 0.75"):
        load_per_patient(f)


@pytest.mark.parametrize("content, match", [
    ("{not json", "is not a valid JSON file"),
    ("[1, 2]", "has no per_patient table"),
    ('{"dice_patient": {}}', "has no per_patient table"),
    ('{"per_patient": []}', "per_patient table is empty"),
    ('{"per_patient": [{"patient": "a", "dice": 0.5}, {"patient": "a", "dice": 0.6}]}',
     "lists patient a twice"),
    ('{"per_patient": [{"dice": 0.5}]}', "row 1 has no patient name"),
    ('{"per_patient": [{"patient": "a"}]}', "neither tp/fp/fn counts nor a dice"),
    ('{"per_patient": [{"patient": "a", "dice": 1.5}]}', "invalid dice"),
    ('{"per_patient": [{"patient": "a", "tp": -1, "fp": 0, "fn": 0}]}', "invalid counts"),
])
def test_load_per_patient_bad_files(tmp_path, content, match):
    f = tmp_path / "summary.json"
    f.write_text(content)
    with pytest.raises(MambasegError, match=match) as info:
        load_per_patient(tmp_path)
    assert str(f) in str(info.value)


def test_load_per_patient_missing(tmp_path):
    with pytest.raises(MambasegError, match="does not exist"):
        load_per_patient(tmp_path / "nope")
    with pytest.raises(MambasegError, match="has no summary.json"):
        load_per_patient(tmp_path)


def test_compare_paths(tmp_path):
    fa = write_summary(tmp_path / "a" / "summary.json", A)
    fb = write_summary(tmp_path / "b" / "summary.json", B)
    r = compare_paths(fa.parent, fb, n_boot=500)
    assert (r["label_a"], r["label_b"]) == ("a", "b")
    assert (r["path_a"], r["path_b"]) == (str(fa), str(fb))
    assert r["mean_diff"] == pytest.approx(paired_comparison(A, B)["mean_diff"])
    assert r["n_boot"] == 500
    one = write_summary(tmp_path / "c" / "summary.json", {"P0": 0.5})
    with pytest.raises(MambasegError, match=f"{one} has 1 patient"):
        compare_paths(one, write_summary(tmp_path / "d" / "summary.json", {"P0": 0.4}))
    with pytest.raises(MambasegError, match="different patients"):
        compare_paths(fa, one)
