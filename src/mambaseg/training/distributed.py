"""Multi-process training with PyTorch's own DistributedDataParallel (launched by ``torchrun``).

``torchrun --nproc_per_node=N -m mambaseg train ...`` sets RANK, WORLD_SIZE and LOCAL_RANK;
:func:`detect` reads them. The process group uses NCCL on CUDA and Gloo on CPU.

Batch semantics: every epoch all ranks draw the same permutation (same seed); each global batch
of ``batch_size`` samples is cut into ``world_size`` contiguous, disjoint pieces, one per rank,
so a rank computes ``batch_size / world_size`` samples per step and DDP averages the gradients.
A final global batch smaller than ``world_size`` is dropped (every rank must take a step).
Losses that pool over the batch (the seed Dice loss) pool over the rank's piece, and BatchNorm
statistics are per rank (no SyncBatchNorm): results are close to, not identical with, a
single-process run. Only rank 0 writes files and shows the progress bar.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def detect() -> DistInfo:
    """Read RANK / WORLD_SIZE / LOCAL_RANK (set by torchrun); single process if absent."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        return DistInfo()
    return DistInfo(rank, world, local) if world > 1 else DistInfo()


def init(info: DistInfo, device: torch.device) -> None:
    """Join the process group (no-op when single-process or already joined)."""
    if not info.enabled or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    kwargs = {"device_id": device} if device.type == "cuda" else {}
    try:
        dist.init_process_group(backend=backend, **kwargs)
    except TypeError:  # older torch without device_id
        dist.init_process_group(backend=backend)


def shutdown(info: DistInfo) -> None:
    """Leave the process group if this module joined one."""
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum ``t`` over ranks, in place; returns it."""
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's ``obj``, in rank order (on every rank); ``[obj]`` when single-process."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shard(global_batch: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """This rank's contiguous piece of a global batch of indices."""
    if not info.enabled:
        return global_batch
    return global_batch.tensor_split(info.world_size)[info.rank]
