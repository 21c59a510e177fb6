"""Each metric of metrics.py against hand-computed values (docs/metrics.md)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mambaseg import metrics as M


def _masks(*pairs):
    """(pred, target) lists of 2x2 masks -> two (N, 1, 2, 2) tensors."""
    p = torch.tensor([a for a, _ in pairs], dtype=torch.float32)[:, None]
    t = torch.tensor([b for _, b in pairs], dtype=torch.float32)[:, None]
    return p, t


EMPTY = [[0, 0], [0, 0]]
ONE = [[1, 0], [0, 0]]
TWO = [[1, 1], [0, 0]]


# ----------------------------------------------------------------------------- tensors

def test_pooled_dice_four_cases():
    assert M.pooled_dice(*_masks((EMPTY, EMPTY))) == 1.0          # both empty
    assert M.pooled_dice(*_masks((EMPTY, ONE))) == 0.0            # missed tumour
    assert M.pooled_dice(*_masks((ONE, EMPTY))) == 0.0            # false positive
    assert M.pooled_dice(*_masks((ONE, TWO))) == pytest.approx(2 * 1 / (1 + 2))


def test_pooled_dice_pools_the_batch_and_thresholds_probabilities():
    probs = torch.tensor([[[[0.9, 0.2], [0.6, 0.5]]], [[[0.1, 0.1], [0.1, 0.1]]]])
    target = torch.tensor([[[[1, 1], [0, 0]]], [[[0, 0], [0, 1]]]])
    # P = {0.9, 0.6} (0.5 is not > 0.5): sum P = 2, sum T = 3, P*T = 1
    assert M.pooled_dice(probs, target) == pytest.approx(2 / 5)
    assert M.pooled_dice(probs, target, threshold=0.05) == pytest.approx(2 * 3 / (8 + 3))


def test_dice_counts_per_sample():
    p, t = _masks((ONE, TWO), (TWO, EMPTY), (EMPTY, EMPTY))
    tp, fp, fn = M.dice_counts(p, t)
    assert tp.tolist() == [1, 0, 0] and fp.tolist() == [0, 2, 0] and fn.tolist() == [1, 0, 0]
    assert tp.dtype == np.int64
    with pytest.raises(ValueError):
        M.dice_counts(p, t[:2])


def test_dice_from_counts_four_cases():
    d = M.dice_from_counts([0, 0, 0, 3], [0, 0, 2, 1], [0, 5, 0, 2])
    assert d.tolist() == pytest.approx([1.0, 0.0, 0.0, 6 / 9])


# ----------------------------------------------------------------------------- dice_paper

def test_dice_paper_batches_of_16_averaged():
    # 20 slices -> batch 1 = slices 0..15, batch 2 = slices 16..19
    tp = np.zeros(20, int); fp = np.zeros(20, int); fn = np.zeros(20, int)
    tp[0], fp[3], fn[15] = 4, 2, 2                     # batch 1: 8 / (8 + 2 + 2) = 2/3
    tp[16], fn[19] = 1, 3                              # batch 2: 2 / (2 + 0 + 3) = 2/5
    r = M.dice_paper(tp, fp, fn)
    assert r["n_batches"] == 2 and r["batch_size"] == 16
    assert r["batches"] == pytest.approx([2 / 3, 2 / 5])
    assert r["mean"] == pytest.approx((2 / 3 + 2 / 5) / 2)
    # pooled per batch, not per slice: the per-slice mean would differ
    assert r["mean"] != pytest.approx(M.dice_slice(tp, fp, fn)["mean"])


def test_dice_paper_all_empty_batch_is_one_and_reported():
    tp = np.zeros(32, int); fp = np.zeros(32, int); fn = np.zeros(32, int)
    tp[0], fn[0] = 1, 1                                 # batch 1: 2/3; batch 2: all empty
    r = M.dice_paper(tp, fp, fn)
    assert r["batches"] == pytest.approx([2 / 3, 1.0])
    assert r["n_empty_batches"] == 1
    assert r["mean_excluding_empty"] == pytest.approx(2 / 3)
    assert M.dice_paper(tp, fp, fn, batch_size=32)["batches"] == pytest.approx([2 / 3])


# ----------------------------------------------------------------------------- dice_slice

def test_dice_slice_mean_and_tumour_only():
    # slices: both empty (1), missed (0), false positive (0), 2*2/(4+1+1) = 2/3
    r = M.dice_slice([0, 0, 0, 2], [0, 0, 3, 1], [0, 4, 0, 1])
    assert r["mean"] == pytest.approx((1 + 0 + 0 + 2 / 3) / 4)
    assert r["n"] == 4 and r["n_tumour"] == 2
    assert r["tumour_mean"] == pytest.approx((0 + 2 / 3) / 2)


# ----------------------------------------------------------------------------- dice_patient

def test_dice_patient_pools_slices_of_each_patient():
    tp, fp, fn = [1, 3, 0, 0, 2], [1, 0, 0, 0, 0], [0, 1, 0, 5, 2]
    patients = ["a", "a", "b", "c", "c"]
    # a: tp 4 fp 1 fn 1 -> 8/10; b: empty -> 1; c: tp 2 fn 7 -> 4/11
    r = M.dice_patient(tp, fp, fn, patients, n_boot=2000)
    vals = [0.8, 1.0, 4 / 11]
    assert r["mean"] == pytest.approx(np.mean(vals))
    assert r["median"] == pytest.approx(0.8)
    assert r["n"] == 3
    lo, hi = r["ci95"]
    assert lo <= r["mean"] <= hi


def test_bootstrap_is_seeded_deterministic_and_contains_the_mean():
    rng = np.random.default_rng(1)
    values = rng.uniform(0.3, 1.0, size=40)
    a = M.bootstrap_mean_ci(values, n_boot=10_000, seed=0)
    b = M.bootstrap_mean_ci(values, n_boot=10_000, seed=0)
    c = M.bootstrap_mean_ci(values, n_boot=10_000, seed=1)
    assert a == b and a != c
    assert a[0] < values.mean() < a[1]
    # width close to the normal approximation 2 * 1.96 * sd / sqrt(n)
    width = 2 * 1.96 * values.std() / math.sqrt(len(values))
    assert a[1] - a[0] == pytest.approx(width, rel=0.15)


def test_bootstrap_of_constant_values_is_a_point():
    assert M.bootstrap_mean_ci([0.7] * 5, n_boot=100) == pytest.approx([0.7, 0.7])


def test_group_counts_order_of_first_appearance():
    names, tp, fp, fn, n = M.group_counts([1, 2, 3], [0, 1, 0], [4, 0, 0], ["b", "a", "b"])
    assert names == ["b", "a"]
    assert tp.tolist() == [4, 2] and fp.tolist() == [0, 1] and fn.tolist() == [4, 0]
    assert n.tolist() == [2, 1]


# ----------------------------------------------------------------------------- global

def test_global_scores_pool_all_pixels():
    tp, fp, fn = [2, 0, 4], [1, 3, 0], [1, 0, 2]            # T=6 F=4 N=3
    g = M.global_scores(tp, fp, fn, ["a", "b", "b"], n_boot=500)
    assert g["dice_global"]["mean"] == pytest.approx(12 / (12 + 4 + 3))
    assert g["iou"]["mean"] == pytest.approx(6 / 13)
    assert g["precision"]["mean"] == pytest.approx(6 / 10)
    assert g["recall"]["mean"] == pytest.approx(6 / 9)
    for key in g:
        lo, hi = g[key]["ci95"]
        assert lo <= g[key]["mean"] <= hi
        assert (g[key]["tp"], g[key]["fp"], g[key]["fn"]) == (6, 4, 3)


def test_global_scores_empty_cases():
    both = M.global_scores([0], [0], [0])
    assert all(both[k]["mean"] == 1.0 for k in both)
    missed = M.global_scores([0], [0], [5])                 # nothing predicted, tumour missed
    assert missed["precision"]["mean"] == 0.0 and missed["recall"]["mean"] == 0.0
    assert missed["dice_global"]["mean"] == 0.0 and missed["iou"]["mean"] == 0.0
    false_pos = M.global_scores([0], [5], [0])              # no tumour, something predicted
    assert false_pos["precision"]["mean"] == 0.0 and false_pos["recall"]["mean"] == 0.0


# ----------------------------------------------------------------------------- fpr_empty

def test_fpr_empty_counts_tumour_free_slices_only():
    tp, fp, fn = [0, 0, 0, 0, 5], [0, 3, 0, 1, 9], [0, 0, 0, 0, 0]
    r = M.fpr_empty(tp, fp, fn)                              # 4 tumour-free, 2 with predictions
    assert r["n_empty_slices"] == 4 and r["n_false_positive_slices"] == 2
    assert r["mean"] == pytest.approx(0.5)
    assert r["mean_predicted_pixels"] == pytest.approx(1.0)
    assert math.isnan(M.fpr_empty([1], [0], [0])["mean"])


# ----------------------------------------------------------------------------- hd95

def _square(top, left, size=20, shape=(64, 64)):
    m = torch.zeros(shape, dtype=torch.bool)
    m[top:top + size, left:left + size] = True
    return m


@pytest.mark.parametrize("k", [0, 1, 3, 7])
def test_hd95_squares_offset_by_k(k):
    assert M.hd95(_square(10, 10), _square(10, 10 + k)) == pytest.approx(k)
    assert M.hd95(_square(10, 10), _square(10 + k, 10)) == pytest.approx(k)


def test_hd95_euclidean_and_symmetric():
    a, b = torch.zeros(16, 16), torch.zeros(16, 16)
    a[2, 3], b[5, 7] = 1, 1                                   # single pixels 3-4-5 apart
    assert M.hd95(a, b) == pytest.approx(5.0)
    a, b = _square(10, 10), _square(13, 14)
    assert M.hd95(a, b) == M.hd95(b, a)
    assert 4.0 <= M.hd95(a, b) <= 5.0                         # between the offsets and the diagonal


def test_hd95_empty_masks_give_none():
    assert M.hd95(torch.zeros(8, 8), _square(1, 1, 3, (8, 8))) is None
    assert M.hd95(_square(1, 1, 3, (8, 8)), np.zeros((8, 8))) is None


def test_boundary_of_a_square():
    b = M.boundary(_square(2, 2, 4, (8, 8)))
    assert int(b.sum()) == 12                                # 4x4 square: 16 - 2x2 interior
    full = M.boundary(torch.ones(3, 3))
    assert int(full.sum()) == 8                              # image edge counts as outside


def test_distance_transform_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    target = torch.rand(30, 41, generator=g) > 0.95
    d = M.distance_to(target)
    pts = torch.nonzero(target).float()
    grid = torch.stack(torch.meshgrid(torch.arange(30.), torch.arange(41.), indexing="ij"), -1)
    brute = torch.cdist(grid.reshape(-1, 2), pts).amin(1).reshape(30, 41)
    assert torch.allclose(d, brute, atol=1e-5)
    assert torch.isinf(M.distance_to(torch.zeros(4, 4))).all()


def test_hd95_large_boundaries_use_the_distance_transform():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(96, 96, generator=g) > 0.5                # noisy masks: many boundary pixels
    b = torch.rand(96, 96, generator=g) > 0.5
    ba, bb = M.boundary(a), M.boundary(b)
    assert int(ba.sum()) * int(bb.sum()) > 4_000_000
    pts = [torch.from_numpy(np.argwhere(x)).float() for x in (ba, bb)]
    ab, ba_ = (torch.cdist(pts[0], pts[1]).amin(1).double().numpy(),
               torch.cdist(pts[1], pts[0]).amin(1).double().numpy())
    assert M.hd95_pooled(a, b) == pytest.approx(float(np.percentile(np.concatenate([ab, ba_]), 95)))
    assert M.hd95(a, b) == pytest.approx(max(np.percentile(ab, 95), np.percentile(ba_, 95)))


def _brute_force_hd95(pred: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    """(max of the directed 95th percentiles, 95th percentile of both directions pooled), written
    independently of metrics.py: boundary = mask XOR its 4-connected erosion (scipy,
    zero outside the image, as MONAI's get_mask_edges), all pairwise Euclidean distances."""
    from scipy.ndimage import binary_erosion
    from scipy.spatial.distance import cdist

    edge = [np.argwhere(m ^ binary_erosion(m, border_value=0)) for m in (pred, target)]
    d = cdist(edge[0], edge[1])                              # (boundary of pred, boundary of target)
    pred_to_target, target_to_pred = d.min(1), d.min(0)
    directed = max(np.percentile(pred_to_target, 95), np.percentile(target_to_pred, 95))
    pooled = np.percentile(np.concatenate([pred_to_target, target_to_pred]), 95)
    return float(directed), float(pooled)


def test_hd95_definitions_match_an_independent_computation():
    # the truth: a 12x12 square; the prediction: the square moved 2 px right, plus a 2x2
    # false-positive blob far away. The blob's 4 boundary pixels are 8 % of the prediction's 48
    # boundary distances (the directed 95th percentile lands on them) but 4 % of the 92 of both
    # directions pooled (the pooled 95th percentile stays at the square's 2 px).
    target = np.zeros((48, 48), bool)
    target[8:20, 8:20] = True
    pred = np.zeros_like(target)
    pred[8:20, 10:22] = True
    pred[38:40, 38:40] = True
    directed, pooled = _brute_force_hd95(pred, target)
    assert directed - pooled > 10                            # the definitions really differ here
    assert pooled == pytest.approx(2.0)                      # the square's offset
    assert M.hd95(pred, target) == pytest.approx(directed)
    assert M.hd95_pooled(pred, target) == pytest.approx(pooled)
    assert M.hd95_both(torch.from_numpy(pred), torch.from_numpy(target)) == pytest.approx(
        (directed, pooled))
    # the directed definition is symmetric in its arguments, like the pooled one
    assert M.hd95(target, pred) == pytest.approx(directed)
    assert M.hd95_pooled(target, pred) == pytest.approx(pooled)
    assert M.hd95_both(np.zeros_like(pred), target) == (None, None)


def test_hd95_summary_counts_empty_predictions():
    tp, fp, fn = [5, 0, 0, 2], [1, 0, 4, 0], [1, 6, 0, 0]
    r = M.hd95_summary([2.0, None, None, 4.0], tp, fp, fn)
    assert r["mean"] == pytest.approx(3.0) and r["median"] == pytest.approx(3.0)
    assert r["n"] == 2 and r["n_tumour_slices"] == 3 and r["n_empty_prediction"] == 1


def test_summarize_gives_both_hd95_definitions_named():
    s = M.summarize([1, 0], [0, 1], [1, 0], ["a", "b"], hd=[3.0, None], hd_pooled=[2.0, None],
                    n_boot=100)
    assert s["hd95"]["mean"] == 3.0 and s["hd95"]["definition"] == "max_directed"
    assert s["hd95_pooled"]["mean"] == 2.0 and s["hd95_pooled"]["definition"] == "pooled"
    assert {k: v for k, v in s["hd95"].items() if k not in ("mean", "median")} == \
        {k: v for k, v in s["hd95_pooled"].items() if k not in ("mean", "median", "definition")} \
        | {"definition": "max_directed"}


# ----------------------------------------------------------------------------- summarize

def test_summarize_has_every_metric_key():
    s = M.summarize([1, 0], [0, 1], [1, 0], ["a", "b"], hd=[1.0, None], n_boot=100)
    assert list(s) == ["dice_paper", "dice_slice", "dice_patient", "dice_global", "iou",
                       "precision", "recall", "hd95", "fpr_empty"]
    assert all("mean" in v for v in s.values())
