"""Losses against values worked out independently with plain Python arithmetic."""
from __future__ import annotations

import math

import pytest
import torch

from mambaseg.training.losses import LOSSES, bce_dice_loss, bce_loss, dice_loss, get_loss
from mambaseg.errors import MambasegError

# two samples of 1x2x2 logits and targets
LOGITS = [[[0.0, 2.0], [-1.0, 3.0]], [[-2.0, 0.5], [1.0, -3.0]]]
TARGETS = [[[0.0, 1.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, 0.0]]]


def _sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _flat(nested) -> list[list[float]]:
    """Per-sample flat lists."""
    return [[v for row in sample for v in row] for sample in nested]


def _tensors(dtype=torch.float32):
    x = torch.tensor(LOGITS, dtype=dtype).unsqueeze(1)  # (2, 1, 2, 2)
    t = torch.tensor(TARGETS).unsqueeze(1)
    return x, t


def _expected_dice(smooth: float = 100.0) -> float:
    p = [_sig(v) for s in _flat(LOGITS) for v in s]
    t = [v for s in _flat(TARGETS) for v in s]
    inter = sum(a * b for a, b in zip(p, t))
    return 1.0 - (2.0 * inter + smooth) / (sum(p) + sum(t) + smooth)


def _expected_bce() -> float:
    terms = []
    for x, t in zip([v for s in _flat(LOGITS) for v in s], [v for s in _flat(TARGETS) for v in s]):
        p = _sig(x)
        terms.append(-(t * math.log(p) + (1.0 - t) * math.log(1.0 - p)))
    return sum(terms) / len(terms)


def _expected_per_sample_dice(smooth: float = 1.0) -> float:
    dices = []
    for xs, ts in zip(_flat(LOGITS), _flat(TARGETS)):
        p = [_sig(v) for v in xs]
        inter = sum(a * b for a, b in zip(p, ts))
        dices.append((2.0 * inter + smooth) / (sum(p) + sum(ts) + smooth))
    return 1.0 - sum(dices) / len(dices)


def test_dice_loss_matches_hand_computed_value():
    x, t = _tensors()
    assert dice_loss(x, t).item() == pytest.approx(_expected_dice(), abs=1e-6)


def test_dice_loss_pools_the_whole_batch_not_per_sample():
    x, t = _tensors()
    whole = dice_loss(x, t).item()
    per_sample = sum(dice_loss(x[i:i + 1], t[i:i + 1]).item() for i in range(2)) / 2
    assert whole != pytest.approx(per_sample, abs=1e-4)


def test_dice_loss_known_numbers():
    # logits 0 -> p = 0.5 everywhere; 4 pixels, 2 of them tumour:
    # 1 - (2*1 + 100) / (2 + 2 + 100) = 1 - 102/104
    x = torch.zeros(1, 1, 2, 2)
    t = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]])
    assert dice_loss(x, t).item() == pytest.approx(1 - 102 / 104, abs=1e-7)


def test_bce_matches_hand_computed_value():
    x, t = _tensors()
    assert bce_loss(x, t).item() == pytest.approx(_expected_bce(), abs=1e-6)
    # logit 0 gives ln 2 whatever the target
    assert bce_loss(torch.zeros(1, 1, 3, 3), torch.ones(1, 1, 3, 3)).item() == pytest.approx(
        math.log(2), abs=1e-7)


def test_bce_dice_matches_hand_computed_value():
    x, t = _tensors()
    expected = _expected_bce() + _expected_per_sample_dice(1.0)
    assert bce_dice_loss(x, t).item() == pytest.approx(expected, abs=1e-6)


def test_bce_dice_equals_seed_formula_on_probabilities():
    """The seed applied nn.BCELoss to sigmoid outputs; same value for moderate logits."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 1, 5, 5, generator=g) * 3
    t = (torch.rand(3, 1, 5, 5, generator=g) > 0.6).float()
    p = torch.sigmoid(x)
    seed_bce = torch.nn.BCELoss()(p.view(3, -1), t.view(3, -1))
    pf, tf = p.view(3, -1), t.view(3, -1)
    seed_dice = 1 - ((2 * (pf * tf).sum(1) + 1) / (pf.sum(1) + tf.sum(1) + 1)).sum() / 3
    assert bce_dice_loss(x, t).item() == pytest.approx((seed_bce + seed_dice).item(), abs=1e-5)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_losses_are_float32_under_autocast(name):
    x, t = _tensors(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = get_loss(name)(x, t)
    assert value.dtype == torch.float32
    ref = get_loss(name)(x.float(), t)
    assert value.item() == pytest.approx(ref.item(), abs=1e-6)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_losses_have_gradients(name):
    x, t = _tensors()
    x.requires_grad_(True)
    get_loss(name)(x, t).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_unknown_loss_names_the_valid_ones():
    with pytest.raises(MambasegError, match="bce_dice"):
        get_loss("focal")
