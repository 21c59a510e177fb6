"""The selective scan by its sequential definition (Gu & Dao 2023, Algorithm 2), for tests.

Computes in float64 (or the promoted input dtype when that is wider) with a Python loop over
time steps: slow but unambiguous. Every fast backend is checked against it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def selective_scan_reference(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                             delta_softplus=False):
    """y[b,d,t] = sum_n C[b,n,t] * x[b,d,n,t] (+ D[d] u[b,d,t]), gated by silu(z).

    x[b,d,n,t] = exp(delta[b,d,t] A[d,n]) x[b,d,n,t-1] + delta[b,d,t] B[b,n,t] u[b,d,t].
    Shapes: u, delta, z (B,D,L); A (D,N); B, C (B,N,L); D, delta_bias (D,).
    Returns a tensor of u's dtype.
    """
    out_dtype = u.dtype
    f = torch.float64
    u, delta, A, B, C = (t.to(f) for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.to(f)[None, :, None]
    if delta_softplus:
        delta = F.softplus(delta)
    batch, dim, length = u.shape
    dA = torch.exp(delta.unsqueeze(-1) * A[None, :, None, :])  # (B,D,L,N)
    dBu = (delta * u).unsqueeze(-1) * B.transpose(1, 2)[:, None, :, :]  # (B,D,L,N)
    x = u.new_zeros(batch, dim, A.shape[1])
    ys = []
    for t in range(length):
        x = dA[:, :, t] * x + dBu[:, :, t]
        ys.append(torch.einsum("bdn,bn->bd", x, C[:, :, t]))
    y = torch.stack(ys, dim=-1) if ys else u.new_zeros(batch, dim, 0)
    if D is not None:
        y = y + u * D.to(f)[None, :, None]
    if z is not None:
        y = y * F.silu(z.to(f))
    return y.to(out_dtype)
