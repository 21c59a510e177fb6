"""The training and validation loops, written to add almost nothing on a GPU.

The whole split lives on the device as uint8 (:class:`DeviceData`); a batch is an
``index_select`` there, converted to float in [0, 1] there, and augmented there. The loss is
accumulated on the device and read back once per epoch, so no step waits for the GPU; so is
a per-step flag of non-finite (NaN/Inf) losses, which the trainer checks after each epoch.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from mambaseg.metrics import dice_from_counts
from mambaseg.training import distributed as D
from mambaseg.training.losses import LossFn


class DeviceData:
    """A split held on its device: images uint8 (N,C,H,W), masks uint8 (N,1,H,W) in {0,1},
    and optionally ``groups`` (N,) long: each slice's patient number (for per-patient Dice)."""

    def __init__(self, images: torch.Tensor, masks: torch.Tensor, channels_last: bool = False,
                 groups: torch.Tensor | None = None):
        if images.shape[0] != masks.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {masks.shape[0]} masks")
        if groups is not None and groups.shape != (images.shape[0],):
            raise ValueError(f"groups must be ({images.shape[0]},), got {tuple(groups.shape)}")
        self.images, self.masks = images, masks
        self.channels_last = channels_last
        self.groups = None if groups is None else groups.to(images.device)

    def sample_weights(self, tumour_fraction: float | None) -> torch.Tensor | None:
        """Per-slice drawing weights (CPU float64) that make tumour slices ``tumour_fraction``
        of the draws on average; None when not oversampling (None or 0) or one kind of slice is
        missing."""
        if not tumour_fraction:
            return None
        tumour = self.masks.flatten(1).amax(1).bool().cpu()
        n_t = int(tumour.sum())
        if n_t in (0, len(tumour)):
            return None
        p = float(tumour_fraction)
        return torch.where(tumour, p / n_t, (1.0 - p) / (len(tumour) - n_t)).double()

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def device(self) -> torch.device:
        return self.images.device

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images float32 in [0, 1] and masks float32 in {0, 1} of the samples ``idx``."""
        x = self.images.index_select(0, idx).float().div_(255.0)
        y = self.masks.index_select(0, idx).float()
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y


def resize_arrays(images: torch.Tensor, masks: torch.Tensor, size: int,
                  chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Resize uint8 images (bilinear, antialiased) and masks (nearest) to ``size`` x ``size``,
    chunk by chunk on their device."""
    if tuple(images.shape[-2:]) == (size, size):
        return images, masks
    out_i = torch.empty((*images.shape[:2], size, size), dtype=torch.uint8, device=images.device)
    out_m = torch.empty((*masks.shape[:2], size, size), dtype=torch.uint8, device=masks.device)
    for s in range(0, images.shape[0], chunk):
        x = images[s:s + chunk].float()
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                          antialias=True)
        out_i[s:s + chunk] = x.round_().clamp_(0, 255).to(torch.uint8)
        m = F.interpolate(masks[s:s + chunk].float(), size=(size, size), mode="nearest")
        out_m[s:s + chunk] = m.to(torch.uint8)
    return out_i, out_m


def epoch_batches(n: int, batch_size: int, generator: torch.Generator, device: torch.device,
                  info: D.DistInfo = D.DistInfo(),
                  weights: torch.Tensor | None = None) -> list[torch.Tensor]:
    """This rank's index batches for one epoch: a permutation drawn from ``generator`` (the
    same on every rank), cut into global batches of ``batch_size``, each sharded over ranks.
    The last, smaller batch is kept (dropped under DDP if it has fewer samples than ranks).
    With ``weights`` (n,), the epoch is ``n`` draws with replacement in those proportions."""
    if weights is not None:
        perm = torch.multinomial(weights, n, replacement=True, generator=generator)
    else:
        perm = torch.randperm(n, generator=generator)
    perm = perm.to(device, non_blocking=True)
    batches = list(perm.split(batch_size))
    if info.enabled:
        batches = [D.shard(b, info) for b in batches if len(b) >= info.world_size]
    return batches


def autocast(device: torch.device, amp_dtype: torch.dtype | None, cache_enabled: bool = True):
    """Autocast context for ``amp_dtype`` (None: a no-op); ``cache_enabled=False`` inside CUDA
    graph capture."""
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=amp_dtype, cache_enabled=cache_enabled)


def eager_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, loss_fn: LossFn,
               amp_dtype: torch.dtype | None, x: torch.Tensor, y: torch.Tensor,
               cache_enabled: bool = True) -> torch.Tensor:
    """One optimizer step on the batch (x, y): forward under autocast, loss, backward, update.
    Returns the loss (still attached to the graph)."""
    with autocast(x.device, amp_dtype, cache_enabled=cache_enabled):
        logits = model(x)
    loss = loss_fn(logits, y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class TrainStats:
    loss: float
    images: int
    seconds: float
    #: the first step (1-based) whose loss was NaN or infinite on any rank; None: all finite
    bad_step: int | None = None
    #: this rank's sample indices of that step's batch
    bad_batch: list[int] | None = None


def train_epoch(model: torch.nn.Module, data: DeviceData, batches: list[torch.Tensor],
                optimizer: torch.optim.Optimizer, loss_fn: LossFn, *,
                amp_dtype: torch.dtype | None = None,
                augment: Callable | None = None, aug_generator: torch.Generator | None = None,
                info: D.DistInfo = D.DistInfo(), bar=None, step_delay: float = 0.0,
                max_steps: int | None = None,
                step: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
                ) -> TrainStats:
    """One pass over ``batches``; returns the sample-weighted mean loss (over all ranks).

    ``augment(x, y, generator)`` transforms each batch when given. ``max_steps`` stops early
    (benchmarks); ``step_delay`` sleeps after each step (tests that interrupt training).
    ``step(x, y) -> loss`` replaces the eager step (forward, loss, backward, optimizer update),
    e.g. a :class:`mambaseg.training.graphs.GraphedTrainStep`.
    The returned ``bad_step`` is the first step whose loss was NaN/Inf (flagged on the device,
    read back with the loss at the end: no extra synchronisation per step).
    """
    device = data.device
    model.train()
    loss_sum = torch.zeros((), dtype=torch.float32, device=device)
    steps = len(batches) if max_steps is None else min(len(batches), max(0, max_steps))
    bad = torch.zeros(steps, dtype=torch.float64, device=device)  # 1.0: non-finite loss
    count = 0
    _sync(device)
    start = time.perf_counter()
    for i, idx in enumerate(batches):
        if max_steps is not None and i >= max_steps:
            break
        x, y = data.batch(idx)
        if augment is not None:
            x, y = augment(x, y, aug_generator)
        if step is not None:
            loss = step(x, y)
        else:
            loss = eager_step(model, optimizer, loss_fn, amp_dtype, x, y)
        n = idx.shape[0]
        bad[i] = (~torch.isfinite(loss.detach())).double()
        loss_sum += loss.detach() * n
        count += n
        if bar is not None:
            bar.update(1)
        if step_delay:
            time.sleep(step_delay)
    totals = torch.cat([loss_sum.double().reshape(1),
                        torch.tensor([float(count)], device=device, dtype=torch.float64), bad])
    D.all_reduce_sum(totals, info)
    _sync(device)
    seconds = time.perf_counter() - start
    total_loss, total_count, *flags = totals.tolist()
    first = next((k for k, flag in enumerate(flags) if flag), None)
    return TrainStats(total_loss / max(total_count, 1.0), int(total_count), seconds,
                      None if first is None else first + 1,
                      None if first is None else batches[first].tolist())


@dataclass
class ValStats:
    loss: float | None
    dice: float | None
    images: int
    seconds: float
    #: mean over patients of each patient's pooled Dice (when the data has groups)
    dice_patient: float | None = None


@torch.inference_mode()
def validate(model: torch.nn.Module, data: DeviceData | None, batch_size: int, loss_fn: LossFn,
             *, amp_dtype: torch.dtype | None = None, info: D.DistInfo = D.DistInfo(),
             threshold: float = 0.5, max_steps: int | None = None,
             forward: Callable[[torch.Tensor], torch.Tensor] | None = None) -> ValStats:
    """Validation loss (sample-weighted mean of batch losses), Dice pooled over the whole split
    at ``threshold`` and the mean over patients of each patient's pooled Dice (counts summed on
    the device, then ``mambaseg.metrics.dice_from_counts``: 1.0 when prediction and target are
    both empty). Under DDP each rank takes a contiguous share and the sums are all-reduced; pass
    the bare model, not the DDP wrapper."""
    if data is None or len(data) == 0:
        return ValStats(None, None, 0, 0.0)
    device = data.device
    model.eval()
    _sync(device)
    start = time.perf_counter()
    # loss_sum, intersection, predicted, target (on the device: no sync per step)
    sums = torch.zeros(4, dtype=torch.float64, device=device)
    groups = data.groups
    n_groups = int(groups.max()) + 1 if groups is not None else 0
    # per patient: intersection, predicted, target
    per_group = torch.zeros(3, max(n_groups, 1), dtype=torch.float64, device=device)
    count = 0
    mine = torch.arange(len(data), device=device)
    if info.enabled:
        mine = mine.tensor_split(info.world_size)[info.rank]
    for step, idx in enumerate(mine.split(batch_size) if len(mine) else ()):
        if max_steps is not None and step >= max_steps:
            break
        x, y = data.batch(idx)
        if forward is not None:
            logits = forward(x)
        else:
            with autocast(device, amp_dtype):
                logits = model(x)
        loss = loss_fn(logits, y)
        pred = torch.sigmoid(logits.float()) > threshold
        target = y > 0.5
        count += idx.shape[0]
        per_sample = torch.stack([(pred & target).flatten(1).sum(1), pred.flatten(1).sum(1),
                                  target.flatten(1).sum(1)]).double()
        sums += torch.cat([loss.double().reshape(1) * idx.shape[0], per_sample.sum(1)])
        if groups is not None:
            per_group.index_add_(1, groups.index_select(0, idx), per_sample)
    sums = torch.cat([sums, torch.tensor([float(count)], dtype=torch.float64).to(device)])
    D.all_reduce_sum(sums, info)
    D.all_reduce_sum(per_group, info)
    loss_sum, inter, n_pred, n_target, count = sums.tolist()
    _sync(device)
    seconds = time.perf_counter() - start
    dice = float(dice_from_counts(inter, n_pred - inter, n_target - inter))
    dice_patient = None
    if groups is not None:
        g_inter, g_pred, g_target = per_group.cpu().numpy()
        g_dice = dice_from_counts(g_inter, g_pred - g_inter, g_target - g_inter)
        seen = np.zeros(n_groups, dtype=bool)
        seen[groups.cpu().numpy()] = True  # patients present in the data (numbers may have gaps)
        dice_patient = float(g_dice[seen].mean())
    return ValStats(loss_sum / max(count, 1.0), dice, int(count), seconds, dice_patient)
