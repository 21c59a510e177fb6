"""Choosing the torch device from a ``--device`` option, with one clear error when it can't be had."""
from __future__ import annotations

import platform

import torch

from mambaseg.errors import MambasegError


def resolve_device(name: str | torch.device | None = "auto",
                   local_rank: int | None = None) -> torch.device:
    """``auto`` (or None) -> CUDA if available, else CPU; ``cpu``, ``cuda`` or ``cuda:N``.

    ``cuda`` without a GPU is a MambasegError. Under torchrun (``local_rank`` given) a CUDA
    device is the process's GPU ``local_rank``, made the current device.
    """
    if isinstance(name, torch.device):
        name = str(name)
    name = (name or "auto").strip().lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise MambasegError(f"unknown device {name!r} (use auto, cpu or cuda)") from None
    if dev.type == "cpu":
        return dev
    if dev.type != "cuda":
        raise MambasegError(f"unsupported device {name!r} (use auto, cpu or cuda)")
    if not torch.cuda.is_available():
        raise MambasegError("--device cuda was asked for, but PyTorch sees no CUDA GPU: CUDA is not "
                            "available on this machine (no GPU or a CPU-only PyTorch); use --device "
                            "cpu or auto")
    count = torch.cuda.device_count()
    if local_rank is not None:
        if local_rank >= count:
            raise MambasegError(f"LOCAL_RANK {local_rank} has no GPU: only {count} visible")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    if dev.index is not None and dev.index >= count:
        raise MambasegError(f"device {name} does not exist: this machine has {count} CUDA device(s)")
    return dev


def device_name(device: torch.device) -> str:
    """Human-readable device name (the GPU's model, or the CPU)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
