"""A tiny learnable dataset for trainer and CLI tests (importable: pytest's pythonpath has tests/)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from mambaseg.data.io import write_png


def make_toy_dataset(root: Path, patients: int = 3, per_patient: int = 5, size: int = 32,
                     seed: int = 0) -> Path:
    """Dark noise with a bright rectangle (on 80 % of the slices); the mask is the rectangle.
    Written as ``root/P<p>/P<p>_<i>.png`` with ``_mask.png`` beside it."""
    rng = np.random.default_rng(seed)
    for p in range(patients):
        folder = root / f"P{p}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(1, per_patient + 1):
            image = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
            mask = np.zeros((size, size), np.uint8)
            if rng.random() < 0.8:
                h, w = rng.integers(4, size // 2, 2)
                y, x = rng.integers(0, size - h), rng.integers(0, size - w)
                mask[y:y + h, x:x + w] = 1
                image[mask == 1] = rng.integers(180, 256, (int(mask.sum()), 3), dtype=np.uint8)
            write_png(folder / f"P{p}_{i}.png", image)
            write_png(folder / f"P{p}_{i}_mask.png", mask * 255)
    return root


class Bright(torch.nn.Module):
    """A model whose logits say tumour exactly where channel 0 of the image is bright (> 0.5);
    it has no valid_size (multiples of 32)."""

    in_channels = 3

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))

    def forward(self, x):
        return (x[:, :1] - 0.5) * 40 * self.w


def nan_loss_at(epoch: int, step: int):
    """A get_loss replacement whose training loss is NaN at ``step`` of ``epoch`` (validation
    calls, under inference mode, mark the epochs)."""
    from mambaseg.training.losses import get_loss

    state = {"epoch": 1, "step": 0, "validating": False}

    def make(name):
        real = get_loss(name)

        def loss_fn(logits, y):
            if torch.is_inference_mode_enabled():
                state["validating"] = True
                return real(logits, y)
            if state["validating"]:
                state.update(epoch=state["epoch"] + 1, step=0, validating=False)
            state["step"] += 1
            loss = real(logits, y)
            return loss * math.nan if (state["epoch"], state["step"]) == (epoch, step) else loss
        return loss_fn
    return make
