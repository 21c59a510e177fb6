"""One entry point, `selective_scan`, dispatching to a backend.

Backends:

- ``reference``: the sequential definition in float64 (slow; for tests).
- ``torch``: parallel scan in plain PyTorch; runs on any device.
- ``triton``: fused Triton kernels; CUDA tensors (or CPU tensors with TRITON_INTERPRET=1).
- ``mamba_ssm``: mamba_ssm's CUDA ``selective_scan_fn``, when that package is importable.

Choice: the ``backend`` argument when given; else the ``MAMBASEG_SCAN_BACKEND`` environment
variable (unset, empty or ``auto``: no preference); else the fastest backend available for the
tensors' device (CUDA: triton, else mamba_ssm, else torch; CPU: torch); triton comes first
since it measured faster than mamba_ssm (docs/scan.md). An unknown or unavailable backend
raises ValueError naming the available ones.
"""
from __future__ import annotations

import functools
import importlib.util
import os

import torch

from mambaseg.ops._common import check_args, no_autocast
from mambaseg.ops.reference import selective_scan_reference
from mambaseg.ops.scan_torch import selective_scan_torch

BACKENDS = ("reference", "torch", "triton", "mamba_ssm")
ENV_VAR = "MAMBASEG_SCAN_BACKEND"


@functools.lru_cache(maxsize=None)
def _importable(module):
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


@functools.lru_cache(maxsize=None)
def _triton_ok():
    if not _importable("triton"):
        return False
    try:  # triton is an optional extra: imported when first used
        from mambaseg.ops.triton import launch  # noqa: F401
    except Exception:  # a broken triton install: treat as unavailable
        return False
    return True


@functools.lru_cache(maxsize=None)
def _mamba_ssm_fn():
    if not _importable("mamba_ssm"):
        return None
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception:
        return None
    return selective_scan_fn


def _interpreter_on():
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.lru_cache(maxsize=None)
def _cuda_ok():
    return torch.cuda.is_available()


def available_backends(device="cpu"):
    """Names of the backends that can run on tensors of ``device`` (str or torch.device)."""
    dev = str(device).split(":")[0]
    names = ["reference", "torch"]
    cuda = dev == "cuda" and _cuda_ok()
    if (cuda or _interpreter_on()) and _triton_ok():
        names.append("triton")
    if cuda and _mamba_ssm_fn() is not None:
        names.append("mamba_ssm")
    return names


def default_backend(device="cpu"):
    avail = available_backends(device)
    for name in ("triton", "mamba_ssm", "torch"):
        if name in avail and (name != "triton" or str(device).startswith("cuda")):
            return name
    return "torch"


def resolve_backend(backend=None, device="cpu"):
    """The backend name that `selective_scan` would use; ValueError if unknown or unavailable."""
    name = backend if backend is not None else os.environ.get(ENV_VAR, "").strip() or None
    if name is None or name.lower() == "auto":
        return default_backend(device)
    name = name.lower()
    source = "backend argument" if backend is not None else f"{ENV_VAR} environment variable"
    if name not in BACKENDS:
        raise ValueError(f"unknown selective-scan backend {name!r} (from the {source}); known: "
                         f"{', '.join(BACKENDS)}; available on {device}: "
                         f"{', '.join(available_backends(device))}")
    avail = available_backends(device)
    if name not in avail:
        why = {"triton": "needs the triton package and CUDA tensors (or TRITON_INTERPRET=1)",
               "mamba_ssm": "needs the mamba_ssm package and CUDA tensors"}.get(name, "")
        raise ValueError(f"selective-scan backend {name!r} (from the {source}) is not available "
                         f"on {device} ({why}); available: {', '.join(avail)}")
    return name


def _mamba_ssm(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """mamba_ssm's kernel, fed the dtypes it accepts; state and accumulation are fp32 inside it."""
    fn = _mamba_ssm_fn()
    out_dtype = u.dtype
    with no_autocast(u.device.type):
        itype = u.dtype if u.dtype in (torch.float32, torch.float16, torch.bfloat16) else torch.float32
        f32 = torch.float32
        u_, delta_ = u.to(itype), delta.to(itype)
        B_ = B if B.dtype in (itype, f32) else B.to(f32)
        C_ = C if C.dtype in (itype, f32) else C.to(f32)
        y = fn(u_, delta_, A.to(f32), B_, C_, D.to(f32) if D is not None else None,
               z=z.to(itype) if z is not None else None,
               delta_bias=delta_bias.to(f32) if delta_bias is not None else None,
               delta_softplus=bool(delta_softplus))
    return y.to(out_dtype)


def _run(name, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    if name == "torch":
        fn = selective_scan_torch
    elif name == "triton":  # triton is an optional extra: imported when first used
        from mambaseg.ops.triton.launch import selective_scan_triton as fn
    elif name == "mamba_ssm":
        fn = _mamba_ssm
    else:
        with no_autocast(u.device.type):
            return selective_scan_reference(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias,
                                            delta_softplus=delta_softplus)
    return fn(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus)


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   backend=None):
    """The selective scan of Mamba (semantics and shapes of mamba_ssm's ``selective_scan_fn``).

    x_t = exp(delta_t A) x_{t-1} + delta_t B_t u_t,   y_t = C_t . x_t + D u_t,   out = y silu(z),
    with delta = softplus(delta + delta_bias) when ``delta_softplus``.

    Shapes: u, delta, z (batch, dim, L); A (dim, dstate) real; B, C (batch, dstate, L);
    D, delta_bias (dim,). Differentiable in every tensor argument. The state and all
    accumulation are fp32 (fp64 for fp64 inputs) whatever the input dtype, also under autocast;
    the result has u's dtype and gradients have their inputs' dtypes.
    ``backend``: "reference" | "torch" | "triton" | "mamba_ssm" | None (see module doc).
    """
    check_args(u, delta, A, B, C, D, z, delta_bias)
    name = resolve_backend(backend, u.device)
    return _run(name, u, delta, A, B, C, D, z, delta_bias, delta_softplus)
