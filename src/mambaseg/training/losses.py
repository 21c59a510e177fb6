"""Training losses, all taking logits (B, 1, H, W) and binary targets of the same shape.

The definitions follow the seed code (lxaw/mamba-tumor-seg):

``dice``
    ``tests/dice_loss.py``: sigmoid probabilities, one Dice over the **whole batch**,
    smoothing 100: ``1 - (2*sum(p*t) + 100) / (sum(p) + sum(t) + 100)``.
``bce_dice``
    ``tests/BCEDiceLoss.py`` (UltraLight VM-UNet runs): binary cross-entropy averaged over every
    pixel plus a **per-sample** Dice loss with smoothing 1, averaged over the batch, weighted 1:1.
    The seed applied ``nn.BCELoss`` to probabilities; here BCE is computed from the logits
    (``binary_cross_entropy_with_logits``), the same quantity computed stably (the seed's
    version differs only where ``nn.BCELoss`` clamps ``log`` at -100, i.e. |logit| > ~100).
``bce``
    ``binary_cross_entropy_with_logits`` averaged over every pixel (the seed's SegFormer run).

Every loss is computed in float32, also under autocast.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from mambaseg.errors import MambasegError

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _fp32(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if logits.shape != targets.shape:
        raise ValueError(f"logits shape {tuple(logits.shape)} != targets shape "
                         f"{tuple(targets.shape)}")
    return logits.float(), targets.float()


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, smooth: float = 100.0) -> torch.Tensor:
    """Seed Dice loss: one soft Dice over the whole batch on sigmoid probabilities."""
    with torch.autocast(logits.device.type, enabled=False):
        x, t = _fp32(logits, targets)
        p = torch.sigmoid(x)
        inter = (p * t).sum()
        return 1.0 - (2.0 * inter + smooth) / (p.sum() + t.sum() + smooth)


def per_sample_dice_loss(logits: torch.Tensor, targets: torch.Tensor,
                         smooth: float = 1.0) -> torch.Tensor:
    """``1 - mean_i dice_i``: soft Dice of each sample (smoothing ``smooth``), averaged."""
    with torch.autocast(logits.device.type, enabled=False):
        x, t = _fp32(logits, targets)
        p = torch.sigmoid(x).flatten(1)
        t = t.flatten(1)
        dice = (2.0 * (p * t).sum(1) + smooth) / (p.sum(1) + t.sum(1) + smooth)
        return 1.0 - dice.mean()


def bce_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy with logits, averaged over every pixel."""
    with torch.autocast(logits.device.type, enabled=False):
        x, t = _fp32(logits, targets)
        return F.binary_cross_entropy_with_logits(x, t)


def bce_dice_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Seed BCE+Dice: pixel-mean BCE plus per-sample Dice loss (smoothing 1), weights 1:1."""
    return bce_loss(logits, targets) + per_sample_dice_loss(logits, targets, smooth=1.0)


#: loss name (as on the command line) -> function(logits, targets) -> scalar tensor
LOSSES: dict[str, LossFn] = {
    "dice": dice_loss,
    "bce_dice": bce_dice_loss,
    "bce": bce_loss,
}


def get_loss(name: str) -> LossFn:
    """The loss called ``name``; MambasegError listing the valid names otherwise."""
    try:
        return LOSSES[name]
    except KeyError:
        raise MambasegError(f"unknown loss {name!r}; choose one of: {', '.join(LOSSES)}") from None
