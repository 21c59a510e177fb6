"""@triton.jit helpers shared by the forward and backward scan kernels.

Tiles are (BD, T): BD channels x T time steps, time the contiguous axis (docs/scan.md).
"""
from __future__ import annotations

import triton
import triton.language as tl

# Sizes and chunk counts vary from call to call: not value-specialised (one compiled variant per
# dtype/flag combination, not one per shape). L and the strides keep Triton's divisibility-by-16
# specialisation: with L % 16 == 0 the loads along time are vectorised, which gives the tiles
# the layout the scans want.
NO_SPEC = ["dim", "dstate", "n_dblk", "n_chunks", "cpp", "P", "ncs", "zero_n", "zero_per"]


@triton.jit
def combine(a1, b1, a2, b2):
    # linear recurrence x -> a x + b; (a1, b1) is the earlier segment: x -> a2 (a1 x + b1) + b2
    return a1 * a2, a2 * b1 + b2


@triton.jit
def softplus(x):
    # log(1 + exp(x)) like torch.nn.functional.softplus (linear above 20), accurate for x << 0
    ex = tl.exp(tl.minimum(x, 20.0))
    return tl.where(x > 20.0, x, tl.where(x < -15.0, ex, tl.log(1.0 + ex)))


@triton.jit
def dsoftplus(x):
    return tl.where(x > 20.0, 1.0, 1.0 / (1.0 + tl.exp(-tl.maximum(x, -60.0))))


@triton.jit
def load_delta(dt_ptr, off, mask, bias, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """(delta', delta + bias) of a (BD, T) tile; delta' = softplus(delta + bias) when SOFTPLUS,
    0 where masked. ``bias``: (BD,)."""
    raw = tl.load(dt_ptr + off, mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        raw = raw + bias[:, None]
    dl = raw
    if SOFTPLUS:
        dl = softplus(raw)
    dl = tl.where(mask, dl, 0.0)
    return dl, raw


@triton.jit
def program_block(bias_ptr, D_ptr, dim, n_dblk, pid, BD: tl.constexpr, HAS_BIAS: tl.constexpr,
                  HAS_D: tl.constexpr):
    """Grid row ``pid``'s batch element ``b`` (int64), channel offsets and mask, and its rows of
    delta_bias and D (fp32 (BD,), zeros when absent)."""
    b = (pid // n_dblk).to(tl.int64)
    offs_d = (pid % n_dblk) * BD + tl.arange(0, BD)
    d_mask = offs_d < dim
    bias = tl.zeros((BD,), tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=d_mask, other=0.0).to(tl.float32)
    Dv = tl.zeros((BD,), tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=d_mask, other=0.0).to(tl.float32)
    return b, offs_d, d_mask, bias, Dv


@triton.jit
def chunk_steps(c, offs_t, L, d_mask, T: tl.constexpr):
    """Chunk c's steps ``t``, their mask and the (BD, T) mask of the block's channels."""
    t = c * T + offs_t
    t_mask = t < L
    return t, t_mask, d_mask[:, None] & t_mask[None, :]


@triton.jit
def column(tile, cols, n):
    """Column n of a (BD, T) tile, as (BD,). ``cols``: (1, T) column indices."""
    return tl.sum(tl.where(cols == n, tile, 0.0), axis=1)


@triton.jit
def load_row(ptr, BD: tl.constexpr, mask):
    """A (T,) row (``ptr``: (T,) pointers) broadcast to a (BD, T) tile, fp32. Loaded as a 2-D
    tile so that it gets the data tiles' layout (a 1-D load gets its own, and a conversion
    through shared memory)."""
    T: tl.constexpr = ptr.shape[0]
    return tl.load(tl.broadcast_to(ptr[None, :], (BD, T)), mask=mask[None, :],
                   other=0.0).to(tl.float32)
