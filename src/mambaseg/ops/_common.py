"""Helpers shared by the selective-scan backends: argument checks and dtype policy."""
from __future__ import annotations

import contextlib

import torch


def check_args(u, delta, A, B, C, D=None, z=None, delta_bias=None):
    """Raise ValueError unless the shapes are those of mamba_ssm's ``selective_scan_fn``.

    u, delta, z: (batch, dim, length); A: (dim, dstate), real; B, C: (batch, dstate, length);
    D, delta_bias: (dim,).
    """
    if u.dim() != 3:
        raise ValueError(f"selective_scan: u must be (batch, dim, length), got shape {tuple(u.shape)}")
    batch, dim, length = u.shape
    if tuple(delta.shape) != (batch, dim, length):
        raise ValueError(f"selective_scan: delta must have u's shape {tuple(u.shape)}, "
                         f"got {tuple(delta.shape)}")
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"selective_scan: A must be (dim={dim}, dstate), got {tuple(A.shape)}")
    if A.is_complex():
        raise ValueError("selective_scan: complex A is not supported")
    dstate = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        if tuple(t.shape) != (batch, dstate, length):
            raise ValueError(f"selective_scan: {name} must be (batch={batch}, dstate={dstate}, "
                             f"length={length}), got {tuple(t.shape)}")
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and tuple(t.shape) != (dim,):
            raise ValueError(f"selective_scan: {name} must be (dim={dim},), got {tuple(t.shape)}")
    if z is not None and tuple(z.shape) != (batch, dim, length):
        raise ValueError(f"selective_scan: z must have u's shape {tuple(u.shape)}, got {tuple(z.shape)}")


def compute_dtype(*tensors):
    """float64 when any input is float64 (tests, gradcheck), else float32 (state is never 16-bit)."""
    for t in tensors:
        if t is not None and t.dtype == torch.float64:
            return torch.float64
    return torch.float32


def no_autocast(device_type):
    """A context that switches autocast off for ``device_type`` (the scan runs on fp32 upcasts).

    A no-op context (cheaper) when autocast is not on for that device.
    """
    try:
        on = torch.is_autocast_enabled(device_type)
    except (TypeError, RuntimeError):  # device type unknown to autocast
        return contextlib.nullcontext()
    if not on:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, enabled=False)
