"""Shared helpers for the selective-scan tests (imported by the test modules and by the
Triton-interpreter subprocess script; must not import triton)."""
from __future__ import annotations

import math

import torch

NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")

# mamba_ssm's test tolerances
TOL = {torch.float32: dict(rtol=6e-4, atol=2e-3), torch.bfloat16: dict(rtol=3e-2, atol=5e-2),
       torch.float16: dict(rtol=3e-3, atol=5e-3), torch.float64: dict(rtol=1e-7, atol=1e-8)}


def make_inputs(batch, dim, length, dstate, *, dtype=torch.float32, device="cpu", has_D=True,
                has_z=True, has_bias=True, softplus=True, seed=0, strong=False, moderate=False,
                weight_dtype=torch.float32):
    """Random inputs with Mamba-like statistics.

    delta: pre-softplus values around softplus^-1(dt), dt in [1e-3, 0.1] plus noise (or positive
    step sizes when softplus is off); A = -(1..N) with jitter (``strong``: larger steps, so decays
    exp(delta A) reach e^-50 and beyond; ``moderate``: dt around 0.3, states remember ~10 steps).
    """
    g = torch.Generator().manual_seed(seed)

    def rn(*shape, scale=1.0):
        return torch.randn(*shape, generator=g) * scale

    u = rn(batch, dim, length)
    if softplus:  # pre-activation delta + bias: about -5 (dt ~ 0.01) normally, about +2 if strong
        centre = (0.0 if has_bias else -4.0) + (6.0 if strong else 3.5 if moderate else 0.0)
        delta = rn(batch, dim, length) + centre
    else:
        delta = torch.rand(batch, dim, length, generator=g) * (0.5 if not strong else 3.0) + 0.01
    A = -(torch.arange(1, dstate + 1, dtype=torch.float32)[None, :].repeat(dim, 1)
          * (0.5 + torch.rand(dim, dstate, generator=g)))
    B = rn(batch, dstate, length)
    C = rn(batch, dstate, length)
    D = rn(dim) if has_D else None
    z = rn(batch, dim, length) if has_z else None
    bias = None
    if has_bias:
        dt = torch.exp(torch.rand(dim, generator=g) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
        bias = dt + torch.log(-torch.expm1(-dt)) if softplus else dt
    out = dict(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=bias)
    for k, v in out.items():
        if v is None:
            continue
        wd = weight_dtype if k in ("A", "D", "delta_bias") else dtype
        out[k] = v.to(device=device, dtype=wd).requires_grad_(True)
    return out


def run(fn, inputs, softplus, grad_out=None, **kw):
    """Output and gradients {name: grad} of ``fn`` at ``inputs`` for upstream ``grad_out``."""
    y = fn(inputs["u"], inputs["delta"], inputs["A"], inputs["B"], inputs["C"], D=inputs["D"],
           z=inputs["z"], delta_bias=inputs["delta_bias"], delta_softplus=softplus, **kw)
    if grad_out is None:
        grad_out = torch.randn(y.shape, generator=torch.Generator().manual_seed(123)).to(y)
    names = [k for k in NAMES if inputs[k] is not None]
    grads = torch.autograd.grad(y, [inputs[k] for k in names], grad_out)
    return y, dict(zip(names, grads)), grad_out


def detached_copy(inputs, dtype=None, device=None):
    out = {}
    for k, v in inputs.items():
        if v is None:
            out[k] = None
            continue
        t = v.detach()
        if dtype is not None and k not in ("A", "D", "delta_bias"):
            t = t.to(dtype)
        if device is not None:
            t = t.to(device)
        out[k] = t.clone().requires_grad_(True)
    return out


def compare(y, grads, y_ref, grads_ref, dtype, what=""):
    """assert_close of the output and of every gradient, in the tolerance of ``dtype``."""
    tol = TOL[dtype]
    assert y.dtype == dtype, f"{what}: output dtype {y.dtype}, expected {dtype}"
    assert torch.isfinite(y).all(), f"{what}: non-finite output"
    torch.testing.assert_close(y.double(), y_ref.double(), **tol, msg=lambda m: f"{what} out: {m}")
    for k, g_ref in grads_ref.items():
        g = grads[k]
        assert torch.isfinite(g).all(), f"{what}: non-finite grad of {k}"
        # weight-like grads sum over batch and time: scale atol with their magnitude
        atol = tol["atol"] * max(1.0, float(g_ref.abs().max()) / 10.0)
        torch.testing.assert_close(g.double(), g_ref.double(), rtol=tol["rtol"], atol=atol,
                                   msg=lambda m, k=k: f"{what} grad {k}: {m}")


# Cases for the Triton interpreter (tiny shapes: the interpreter runs the scan element by element).
# (id, (batch, dim, L, N), flags, config); the chunk length T is at least N.
INTERP_CASES = [
    ("L1", (2, 3, 1, 4), dict(), {"T": 8, "BD": 4}),
    ("odd_L_split", (2, 3, 29, 4), dict(), {"T": 8, "BD": 4}),
    ("odd_L_nosplit_dblocks", (1, 3, 37, 3), dict(), {"T": 8, "BD": 2, "P": 1}),
    ("split_partial_parts", (1, 5, 34, 4), dict(), {"T": 8, "BD": 4, "P": 3}),
    ("no_optional", (1, 2, 40, 4), dict(has_D=False, has_z=False, has_bias=False, softplus=False),
     {"T": 8, "BD": 2}),
    ("z_only", (1, 3, 20, 2), dict(has_D=False, has_bias=False), {"T": 8, "BD": 4, "P": 1}),
    ("D_bias_no_z", (1, 2, 33, 4), dict(has_z=False, softplus=False), {"T": 8, "BD": 1, "P": 2}),
    ("strong_decay", (1, 2, 40, 4), dict(strong=True), {"T": 8, "BD": 2}),
    ("moderate_decay_split", (1, 2, 45, 4), dict(moderate=True, has_bias=False), {"T": 8, "BD": 2}),
    ("bf16", (2, 3, 24, 4), dict(dtype=torch.bfloat16), {"T": 8, "BD": 4}),
    ("odd_L_27", (1, 2, 27, 4), dict(), {"T": 8, "BD": 2}),
]
_BASE = {cid: (shape, flags, config) for cid, shape, flags, config in INTERP_CASES}


def _variants(prefix, ids, **keys):
    return [(prefix + cid, _BASE[cid][0], _BASE[cid][1], dict(_BASE[cid][2], **keys))
            for cid in ids]


# ... with dB/dC reduced over the channel block in the program (BC=1; then atomically added
# with several channel blocks, stored in the input dtype with one)
INTERP_CASES += _variants("bc1_", ("split_partial_parts", "z_only", "bf16"), BC=1)
# ... without the backward's loads of the next state's rows ahead of time (PF=0; PF=1 is the
# default)
INTERP_CASES += _variants("pf0_", ("odd_L_nosplit_dblocks", "split_partial_parts", "bf16"), PF=0)
# ... with the forward's own chunk length (T_FWD > T: it saves the states entering each of the
# backward's chunks from inside its own) or parts (P_FWD != P)
INTERP_CASES += [
    ("tfwd_odd_L", (2, 3, 45, 4), dict(), {"T": 8, "T_FWD": 32, "BD": 1}),
    ("tfwd_short", (1, 2, 5, 4), dict(), {"T": 8, "T_FWD": 16, "BD": 2}),
    ("tfwd_no_z_bf16", (1, 3, 40, 4), dict(has_z=False, dtype=torch.bfloat16),
     {"T": 8, "T_FWD": 16, "BD": 1, "P": 2}),
    ("pfwd1_split_bwd", (1, 3, 34, 4), dict(), {"T": 8, "P": 3, "P_FWD": 1}),
    ("split_fwd_pbwd1", (1, 3, 34, 4), dict(), {"T": 8, "P": 1, "P_FWD": 3}),
]
# ... with the split backward's carry pass (LB=0; LB=1, one launch with look-back between the
# parts, is the default where the backward splits)
INTERP_CASES += _variants("lb0_", ("odd_L_split", "split_partial_parts", "D_bias_no_z", "bf16"),
                          LB=0)
INTERP_CASES.append(("default_config", (1, 3, 21, 2), dict(), None))
