"""Selective scan in Triton: fused forward and backward kernels (CUDA; CPU under TRITON_INTERPRET=1).

Two kernel layouts share the autograd wrapper and the launch code of this module: the "lean"
layout of :mod:`mambaseg.ops.scan_triton_lean` (launch-config key ``KERNEL=2``), the default,
and the "tile" layout below (``KERNEL=1``). On an H100 the lean kernels take 0.43-0.47x the
tile kernels' GPU time at three of the five benchmark shapes, 0.77x at (8, 16, 4096) and the
same at (8, 12, 1024) (benchmarks/results/README.md).
Host side: each problem signature (shapes, strides, dtypes, flags, configuration) gets a plan
(`_Plan`, built once: grids, int arguments, constexprs, workspace layout), so a call only
allocates its buffers and launches; launches go through :mod:`mambaseg.ops.triton_launch` (the
compiled launcher directly, with pointers as ints, after Triton's own path has run once per
specialisation).

Tile layout (KERNEL=1)
----------------------
A program owns one batch element, a block of ``BD`` channels and a contiguous range of time
(a "part"), and walks that range in chunks of ``T`` steps. Per chunk it loads (T, BD) tiles of
delta/u/z and (T, N) tiles of B/C, builds the (T, BD, N) decays ``a = exp(delta A)`` (in (0, 1])
and inputs ``b = delta u B`` in registers and solves the chunk with ``tl.associative_scan`` over
T (linear-recurrence combine ``(a1,b1),(a2,b2) -> (a1 a2, a2 b1 + b2)``); the (BD, N) state
crosses chunks in registers, in fp32 whatever the input dtype. The tiles are time-major so that,
with Triton's default layouts, every lane owns one (channel, state) pair and holds the T steps
of the chunk in registers: the scan is a sequential in-register loop (no shuffles) and only the
reductions over N (y = C.x) use warp shuffles. y, the D skip and the silu(z) gate are fused; the
state entering every chunk, (B, D, L/T, N) fp32, and the pre-gate output (when z is given) are
saved for the backward.

Parallelism along L ("split", for small batch x channels such as D = 12 or 16 with long L): the
sequence is cut into ``P`` parts run by different programs. Pass 1 scans each part from a zero
state, writes the partial y (fp32) and the part's final state and sum of delta; pass 2 ("fix")
gives each part its true incoming state (a short sequential combine of the previous parts'
summaries), adds ``sum_n C_t exp(A * segment-sum(delta)) S_in`` to y, corrects the saved chunk
states and applies D and the gate. Decays are exponentials of segment sums of delta times A, so
only exp of non-positive numbers (A < 0) is taken and nothing is divided.

Backward (one program per batch element x channel block x part, chunks in reverse order):
recompute the chunk's states from the saved chunk-entry state (forward scan); the adjoint
``h_t = dy_t C_t + a_{t+1} h_{t+1}`` by a suffix scan, carried across chunks; from (x, h): du,
ddelta (bias and softplus folded in), dz, and dB, dC (reduced over the channel block in the
program, then atomically over blocks), dA, dD, ddelta_bias (accumulated in registers over the
chunks, then atomically over batch and parts). With ``P > 1`` a first pass computes each part's
local adjoint at its first step (zero carry) and the decay across the part, so that every part
starts from its exact carry.

Lean layout (KERNEL=2, the default; module scan_triton_lean)
--------------------------------------------------------------
Same semantics and autograd wrapper, other kernels: tiles of (BD channels x T steps) with time
over the lanes (4 steps per lane, one channel per warp at its default T = 128) and a run-time
loop over the N states inside each chunk, so that only (BD, T) tiles of one state are live (the
backward needs at most 128 registers per thread on sm_90 instead of 231); the adjoint is a
forward scan over time-reversed tiles, made in registers from tiles loaded in time order; the
chunk-entry states are saved with its own chunk length and layout. See scan_triton_lean's
docstring for the details.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable

import torch
import triton
import triton.language as tl

from mambaseg.ops._common import no_autocast
from mambaseg.ops.triton_launch import Launcher

_F32 = torch.float32

@triton.jit
def _combine(a1, b1, a2, b2):
    # (a1, b1) is the earlier segment, (a2, b2) the later one: x -> a2 (a1 x + b1) + b2
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _reverse_scan(c, g, REV: tl.constexpr):
    # Suffix scan along axis 0 (the in-thread time axis): h_t = g_t + c_t h_{t+1}.
    # REV == 0: a forward scan between two flips. Triton lowers `reverse=True` by reversing every
    # value across the warp's lanes before and after the scan (10 shuffles per value), while
    # flipping an axis that lives in registers compiles to register renaming (checked on the
    # sm_90 SASS of Triton 3.8: 232 instead of 552 shuffles per chunk in the backward kernel).
    # REV == 1: tl.associative_scan(reverse=True), kept as a fallback (config key REV=1).
    if REV == 1:
        cc, hh = tl.associative_scan((c, g), axis=0, combine_fn=_combine, reverse=True)
    else:
        cc, hh = tl.associative_scan((tl.flip(c, 0), tl.flip(g, 0)), axis=0, combine_fn=_combine)
        cc = tl.flip(cc, 0)
        hh = tl.flip(hh, 0)
    return cc, hh


@triton.jit
def _softplus(x):
    # log(1 + exp(x)) like torch.nn.functional.softplus (linear above 20), accurate for x << 0
    ex = tl.exp(tl.minimum(x, 20.0))
    return tl.where(x > 20.0, x, tl.where(x < -15.0, ex, tl.log(1.0 + ex)))


@triton.jit
def _dsoftplus(x):
    return tl.where(x > 20.0, 1.0, 1.0 / (1.0 + tl.exp(-tl.maximum(x, -60.0))))


@triton.jit
def _load_delta(dt_ptr, off, mask, bias, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                CHANNEL_AXIS: tl.constexpr = 1):
    """delta' = softplus(delta + bias) (as configured), 0 where masked; also delta + bias.

    ``off``/``mask``: 2-D offsets and mask with channels along ``CHANNEL_AXIS`` ((T, BD) tiles
    of these kernels: 1; (BD, T) tiles of the lean kernels: 0); ``bias``: (BD,)."""
    raw = tl.load(dt_ptr + off, mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        if CHANNEL_AXIS == 1:
            raw = raw + bias[None, :]
        else:
            raw = raw + bias[:, None]
    dl = raw
    if SOFTPLUS:
        dl = _softplus(raw)
    dl = tl.where(mask, dl, 0.0)
    return dl, raw


@triton.jit
def _channel_block(A_ptr, bias_ptr, D_ptr, dim, dstate, n_dblk, BD: tl.constexpr,
                   NP: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_D: tl.constexpr):
    """What every kernel starts with: this program's batch element ``b`` (int64), channel and
    state offsets and masks, and its rows of A (fp32, (BD, NP)), delta_bias and D (zeros when
    absent)."""
    b, offs_d, d_mask = _program_channels(dim, n_dblk, tl.program_id(0), BD)
    offs_n = tl.arange(0, NP)
    n_mask = offs_n < dstate
    A = tl.load(A_ptr + offs_d[:, None] * dstate + offs_n[None, :],
                mask=d_mask[:, None] & n_mask[None, :], other=0.0).to(tl.float32)
    bias, Dv = _bias_and_D(bias_ptr, D_ptr, offs_d, d_mask, BD, HAS_BIAS, HAS_D)
    return b, offs_d, offs_n, d_mask, n_mask, A, bias, Dv


@triton.jit
def _program_channels(dim, n_dblk, pid, BD: tl.constexpr):
    """The batch element ``b`` (int64) and the block of channels (offsets, mask) of row ``pid``
    of the grid (its first axis)."""
    b = (pid // n_dblk).to(tl.int64)
    offs_d = (pid % n_dblk) * BD + tl.arange(0, BD)
    return b, offs_d, offs_d < dim


@triton.jit
def _bias_and_D(bias_ptr, D_ptr, offs_d, d_mask, BD: tl.constexpr, HAS_BIAS: tl.constexpr,
                HAS_D: tl.constexpr):
    """The block's rows of delta_bias and D, fp32, zeros when absent."""
    bias = tl.zeros((BD,), tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=d_mask, other=0.0).to(tl.float32)
    Dv = tl.zeros((BD,), tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=d_mask, other=0.0).to(tl.float32)
    return bias, Dv


@triton.jit
def _program_block(bias_ptr, D_ptr, dim, n_dblk, pid, BD: tl.constexpr, HAS_BIAS: tl.constexpr,
                   HAS_D: tl.constexpr):
    """``_channel_block`` of grid row ``pid`` without A (the lean kernels load A one state at a
    time)."""
    b, offs_d, d_mask = _program_channels(dim, n_dblk, pid, BD)
    bias, Dv = _bias_and_D(bias_ptr, D_ptr, offs_d, d_mask, BD, HAS_BIAS, HAS_D)
    return b, offs_d, d_mask, bias, Dv


@triton.jit
def _finish_output(y, u, Dv, z_ptrs, ysave_ptrs, out_ptrs, mask, HAS_D: tl.constexpr,
                   HAS_Z: tl.constexpr, SAVE: tl.constexpr):
    """The end of the forward for one tile: y + D u; the pre-gate y saved for dz (SAVE and
    HAS_Z); times silu(z); stored. ``Dv``: D broadcast to y's tile; ``*_ptrs``: pointer tiles."""
    if HAS_D:
        y += Dv * u
    if HAS_Z:
        if SAVE:
            tl.store(ysave_ptrs, y.to(ysave_ptrs.dtype.element_ty), mask=mask)
        zz = tl.load(z_ptrs, mask=mask, other=0.0).to(tl.float32)
        y = y * zz * tl.sigmoid(zz)
    tl.store(out_ptrs, y.to(out_ptrs.dtype.element_ty), mask=mask)


# Sizes and batch/channel strides vary from call to call: no value specialisation for them (one
# compiled variant per dtype/flag combination instead of one per shape). Time strides keep it (==1
# for the usual contiguous layouts, which gives vectorised loads).
_NO_SPEC = ["dim", "L", "dstate", "n_dblk", "n_chunks", "cpp", "P", "ncs", "zero_n", "zero_per",
            "s_ub", "s_ud", "s_db", "s_dd", "s_zb", "s_zd", "s_Bb", "s_Bn", "s_Cb", "s_Cn",
            "s_gb", "s_gd"]

# Tiles are "time-major": (T, BD) for per-channel sequences, (T, NP) for B and C, (T, BD, NP) for
# the states. With Triton's default layouts this keeps the T axis inside each thread (the chunk
# scan is a sequential in-register loop, no shuffles) while the lanes cover N (16) x channels
# (2) and the warps cover channels; reductions over N are warp shuffles, over channels shuffles
# plus shared memory.


@triton.jit
def _zero_strip(acc_ptr, zero_n, zero_per, ZB: tl.constexpr):
    """Zero this program's strip of ``acc_ptr[0:zero_n]``: ``zero_per`` elements (a multiple of
    ZB) per program, in launch order. The forward kernels zero the backward's accumulator this
    way, which saves the backward an allocation and a fill launch."""
    pid = tl.program_id(1) * tl.num_programs(0) + tl.program_id(0)
    offs = pid.to(tl.int64) * zero_per + tl.arange(0, ZB)
    for i in range(0, zero_per, ZB):
        tl.store(acc_ptr + i + offs, tl.zeros((ZB,), tl.float32), mask=i + offs < zero_n)


@triton.jit(do_not_specialize=_NO_SPEC)
def _fwd_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr,
    out_ptr, ysave_ptr, st_ptr, pst_ptr, pds_ptr, acc_ptr,
    dim, L, dstate, n_dblk, n_chunks, cpp, P, ncs, zero_n, zero_per,
    s_ub, s_ud, s_ul, s_db, s_dd, s_dl, s_zb, s_zd, s_zl,
    s_Bb, s_Bn, s_Bl, s_Cb, s_Cn, s_Cl,
    BD: tl.constexpr, NP: tl.constexpr, T: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    SAVE: tl.constexpr, SPLIT: tl.constexpr, TS: tl.constexpr,
):
    # (TS: the saved states' chunk length, always T here; ncs: their chunk count, n_chunks)
    part = tl.program_id(1)
    if SAVE:
        _zero_strip(acc_ptr, zero_n, zero_per, 512)
    b, offs_d, offs_n, d_mask, n_mask, A, bias, Dv = _channel_block(
        A_ptr, bias_ptr, D_ptr, dim, dstate, n_dblk, BD, NP, HAS_BIAS, HAS_D)
    A2 = A * 1.4426950408889634  # exp(x A) = exp2(x A2)
    offs_t = tl.arange(0, T)
    state = tl.zeros((BD, NP), tl.float32)
    dsum = tl.zeros((BD,), tl.float32)
    row = b * dim + offs_d  # (b, d) row of the contiguous (B, D, L) buffers
    c0 = part * cpp
    c1 = tl.minimum(c0 + cpp, n_chunks)
    for c in range(c0, c1):
        t = c * T + offs_t
        t_mask = t < L
        m2 = t_mask[:, None] & d_mask[None, :]
        mn = t_mask[:, None] & n_mask[None, :]
        dl, raw = _load_delta(dt_ptr + b * s_db, t[:, None] * s_dl + offs_d[None, :] * s_dd, m2,
                              bias, HAS_BIAS, SOFTPLUS)
        u = tl.load(u_ptr + b * s_ub + t[:, None] * s_ul + offs_d[None, :] * s_ud, mask=m2,
                    other=0.0).to(tl.float32)
        Bt = tl.load(B_ptr + b * s_Bb + t[:, None] * s_Bl + offs_n[None, :] * s_Bn, mask=mn,
                     other=0.0).to(tl.float32)
        Ct = tl.load(C_ptr + b * s_Cb + t[:, None] * s_Cl + offs_n[None, :] * s_Cn, mask=mn,
                     other=0.0).to(tl.float32)
        if SAVE:
            tl.store(st_ptr + (row[:, None] * n_chunks + c) * NP + offs_n[None, :], state,
                     mask=d_mask[:, None])
        a = tl.exp2(dl[:, :, None] * A2[None, :, :])  # (T, BD, NP), in (0, 1]
        bx = (dl * u)[:, :, None] * Bt[:, None, :]
        acum, xs = tl.associative_scan((a, bx), axis=0, combine_fn=_combine)
        x = xs + acum * state[None, :, :]
        y = tl.sum(x * Ct[:, None, :], axis=2)  # (T, BD)
        state = tl.sum(tl.where(offs_t[:, None, None] == T - 1, x, 0.0), axis=0)
        o_off = row[None, :] * L + t[:, None]
        if SPLIT:
            dsum += tl.sum(dl, axis=0)
            tl.store(out_ptr + o_off, y, mask=m2)  # fp32 partial y, finished by the fix kernel
        else:
            _finish_output(y, u, Dv[None, :],
                           z_ptr + b * s_zb + t[:, None] * s_zl + offs_d[None, :] * s_zd,
                           ysave_ptr + o_off, out_ptr + o_off, m2, HAS_D, HAS_Z, SAVE)
    if SPLIT:
        prow = (b * P + part) * dim + offs_d
        tl.store(pst_ptr + prow[:, None] * NP + offs_n[None, :], state, mask=d_mask[:, None])
        tl.store(pds_ptr + prow, dsum, mask=d_mask)


@triton.jit(do_not_specialize=_NO_SPEC)
def _fwd_fix_kernel(
    u_ptr, dt_ptr, A_ptr, C_ptr, D_ptr, z_ptr, bias_ptr,
    ybuf_ptr, out_ptr, st_ptr, pst_ptr, pds_ptr,
    dim, L, dstate, n_dblk, n_chunks, cpp, P,
    s_ub, s_ud, s_ul, s_db, s_dd, s_dl, s_zb, s_zd, s_zl, s_Cb, s_Cn, s_Cl,
    BD: tl.constexpr, NP: tl.constexpr, T: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    SAVE: tl.constexpr,
):
    part = tl.program_id(1)
    b, offs_d, offs_n, d_mask, n_mask, A, bias, Dv = _channel_block(
        A_ptr, bias_ptr, D_ptr, dim, dstate, n_dblk, BD, NP, HAS_BIAS, HAS_D)
    A2 = A * 1.4426950408889634  # exp(x A) = exp2(x A2)
    offs_t = tl.arange(0, T)
    # true state entering this part: combine the summaries of the parts before it
    S = tl.zeros((BD, NP), tl.float32)
    for q in range(0, part):
        prow = (b * P + q) * dim + offs_d
        ds = tl.load(pds_ptr + prow, mask=d_mask, other=0.0)
        sq = tl.load(pst_ptr + prow[:, None] * NP + offs_n[None, :], mask=d_mask[:, None], other=0.0)
        S = tl.exp2(A2 * ds[:, None]) * S + sq
    row = b * dim + offs_d
    run = tl.zeros((BD,), tl.float32)  # sum of delta from the part start to the chunk start
    c0 = part * cpp
    c1 = tl.minimum(c0 + cpp, n_chunks)
    for c in range(c0, c1):
        t = c * T + offs_t
        t_mask = t < L
        m2 = t_mask[:, None] & d_mask[None, :]
        o_off = row[None, :] * L + t[:, None]
        y = tl.load(ybuf_ptr + o_off, mask=m2, other=0.0)
        if part > 0:
            dl, raw = _load_delta(dt_ptr + b * s_db, t[:, None] * s_dl + offs_d[None, :] * s_dd,
                                  m2, bias, HAS_BIAS, SOFTPLUS)
            Ct = tl.load(C_ptr + b * s_Cb + t[:, None] * s_Cl + offs_n[None, :] * s_Cn,
                         mask=t_mask[:, None] & n_mask[None, :], other=0.0).to(tl.float32)
            cs = tl.cumsum(dl, axis=0) + run[None, :]
            dec = tl.exp2(A2[None, :, :] * cs[:, :, None])  # exp(A * segment sum) <= 1
            y += tl.sum(dec * S[None, :, :] * Ct[:, None, :], axis=2)
            if SAVE:
                s_off = (row[:, None] * n_chunks + c) * NP + offs_n[None, :]
                st = tl.load(st_ptr + s_off, mask=d_mask[:, None], other=0.0)
                tl.store(st_ptr + s_off, st + tl.exp2(A2 * run[:, None]) * S, mask=d_mask[:, None])
            run += tl.sum(dl, axis=0)
        u = tl.load(u_ptr + b * s_ub + t[:, None] * s_ul + offs_d[None, :] * s_ud, mask=m2,
                    other=0.0).to(tl.float32)
        _finish_output(y, u, Dv[None, :],  # the pre-gate output, for dz, into ybuf
                       z_ptr + b * s_zb + t[:, None] * s_zl + offs_d[None, :] * s_zd,
                       ybuf_ptr + o_off, out_ptr + o_off, m2, HAS_D, HAS_Z, SAVE)


@triton.jit(do_not_specialize=_NO_SPEC)
def _bwd_carry_kernel(
    dt_ptr, A_ptr, C_ptr, z_ptr, bias_ptr, g_ptr, phl_ptr, pes_ptr,
    dim, L, dstate, n_dblk, n_chunks, cpp, P,
    s_db, s_dd, s_dl, s_zb, s_zd, s_zl, s_Cb, s_Cn, s_Cl, s_gb, s_gd, s_gl,
    BD: tl.constexpr, NP: tl.constexpr, T: tl.constexpr,
    HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, REV: tl.constexpr,
):
    """Split backward, pass 1: each part's adjoint at its first step from a zero carry."""
    part = tl.program_id(1) + 1  # part 0's summary is never needed
    b, offs_d, offs_n, d_mask, n_mask, A, bias, Dv = _channel_block(
        A_ptr, bias_ptr, A_ptr, dim, dstate, n_dblk, BD, NP, HAS_BIAS, False)
    A2 = A * 1.4426950408889634
    offs_t = tl.arange(0, T)
    H = tl.zeros((BD, NP), tl.float32)
    esum = tl.zeros((BD,), tl.float32)
    c0 = part * cpp
    c1 = tl.minimum(c0 + cpp, n_chunks)
    for i in range(0, c1 - c0):
        c = c1 - 1 - i
        t = c * T + offs_t
        t_mask = t < L
        m2 = t_mask[:, None] & d_mask[None, :]
        mn2 = (t + 1 < L)[:, None] & d_mask[None, :]
        dln, rawn = _load_delta(dt_ptr + b * s_db, (t + 1)[:, None] * s_dl + offs_d[None, :] * s_dd,
                                mn2, bias, HAS_BIAS, SOFTPLUS)
        dy = tl.load(g_ptr + b * s_gb + t[:, None] * s_gl + offs_d[None, :] * s_gd, mask=m2,
                     other=0.0).to(tl.float32)
        if HAS_Z:
            zz = tl.load(z_ptr + b * s_zb + t[:, None] * s_zl + offs_d[None, :] * s_zd,
                         mask=m2, other=0.0).to(tl.float32)
            dy = dy * zz * tl.sigmoid(zz)
        Ct = tl.load(C_ptr + b * s_Cb + t[:, None] * s_Cl + offs_n[None, :] * s_Cn,
                     mask=t_mask[:, None] & n_mask[None, :], other=0.0).to(tl.float32)
        an = tl.exp2(dln[:, :, None] * A2[None, :, :])  # a_{t+1}
        g = dy[:, :, None] * Ct[:, None, :]
        ccum, hs = _reverse_scan(an, g, REV)
        h = hs + ccum * H[None, :, :]
        H = tl.sum(tl.where(offs_t[:, None, None] == 0, h, 0.0), axis=0)
        esum += tl.sum(dln, axis=0)
    prow = (b * P + part) * dim + offs_d
    tl.store(phl_ptr + prow[:, None] * NP + offs_n[None, :], H, mask=d_mask[:, None])
    tl.store(pes_ptr + prow, esum, mask=d_mask)


@triton.jit(do_not_specialize=_NO_SPEC)
def _bwd_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, g_ptr, ysave_ptr, st_ptr,
    phl_ptr, pes_ptr, du_ptr, ddt_ptr, dz_ptr, dB_ptr, dC_ptr, acc_ptr,
    dim, L, dstate, n_dblk, n_chunks, cpp, P,
    s_ub, s_ud, s_ul, s_db, s_dd, s_dl, s_zb, s_zd, s_zl,
    s_Bb, s_Bn, s_Bl, s_Cb, s_Cn, s_Cl, s_gb, s_gd, s_gl,
    BD: tl.constexpr, NP: tl.constexpr, T: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    SPLIT: tl.constexpr, ATOMIC_BC: tl.constexpr, REV: tl.constexpr,
):
    part = tl.program_id(1)
    b, offs_d, offs_n, d_mask, n_mask, A, bias, Dv = _channel_block(
        A_ptr, bias_ptr, D_ptr, dim, dstate, n_dblk, BD, NP, HAS_BIAS, HAS_D)
    A2 = A * 1.4426950408889634
    offs_t = tl.arange(0, T)
    dn_mask = d_mask[:, None] & n_mask[None, :]
    # adjoint at the first step of the next part
    H = tl.zeros((BD, NP), tl.float32)
    if SPLIT:
        for i in range(0, P - 1 - part):
            q = P - 1 - i
            prow = (b * P + q) * dim + offs_d
            es = tl.load(pes_ptr + prow, mask=d_mask, other=0.0)
            hq = tl.load(phl_ptr + prow[:, None] * NP + offs_n[None, :], mask=d_mask[:, None],
                         other=0.0)
            H = hq + tl.exp2(A2 * es[:, None]) * H
    dA_acc = tl.zeros((BD, NP), tl.float32)
    dD_acc = tl.zeros((BD,), tl.float32)
    db_acc = tl.zeros((BD,), tl.float32)
    row = b * dim + offs_d
    c0 = part * cpp
    c1 = tl.minimum(c0 + cpp, n_chunks)
    for i in range(0, c1 - c0):
        c = c1 - 1 - i
        t = c * T + offs_t
        t_mask = t < L
        m2 = t_mask[:, None] & d_mask[None, :]
        mn = t_mask[:, None] & n_mask[None, :]
        dl, raw = _load_delta(dt_ptr + b * s_db, t[:, None] * s_dl + offs_d[None, :] * s_dd, m2,
                              bias, HAS_BIAS, SOFTPLUS)
        dln, rawn = _load_delta(dt_ptr + b * s_db, (t + 1)[:, None] * s_dl + offs_d[None, :] * s_dd,
                                (t + 1 < L)[:, None] & d_mask[None, :], bias, HAS_BIAS, SOFTPLUS)
        u = tl.load(u_ptr + b * s_ub + t[:, None] * s_ul + offs_d[None, :] * s_ud, mask=m2,
                    other=0.0).to(tl.float32)
        Bt = tl.load(B_ptr + b * s_Bb + t[:, None] * s_Bl + offs_n[None, :] * s_Bn, mask=mn,
                     other=0.0).to(tl.float32)
        Ct = tl.load(C_ptr + b * s_Cb + t[:, None] * s_Cl + offs_n[None, :] * s_Cn, mask=mn,
                     other=0.0).to(tl.float32)
        gout = tl.load(g_ptr + b * s_gb + t[:, None] * s_gl + offs_d[None, :] * s_gd, mask=m2,
                       other=0.0).to(tl.float32)
        S = tl.load(st_ptr + (row[:, None] * n_chunks + c) * NP + offs_n[None, :],
                    mask=d_mask[:, None], other=0.0)
        # states of the chunk
        a = tl.exp2(dl[:, :, None] * A2[None, :, :])
        dlu = dl * u
        bx = dlu[:, :, None] * Bt[:, None, :]
        acum, xs = tl.associative_scan((a, bx), axis=0, combine_fn=_combine)
        x = xs + acum * S[None, :, :]
        o_off = row[None, :] * L + t[:, None]
        dy = gout
        if HAS_Z:
            zz = tl.load(z_ptr + b * s_zb + t[:, None] * s_zl + offs_d[None, :] * s_zd,
                         mask=m2, other=0.0).to(tl.float32)
            yp = tl.load(ysave_ptr + o_off, mask=m2, other=0.0).to(tl.float32)  # pre-gate output
            sz = tl.sigmoid(zz)
            dy = gout * zz * sz
            dz = gout * yp * sz * (1.0 + zz * (1.0 - sz))
            tl.store(dz_ptr + o_off, dz.to(dz_ptr.dtype.element_ty), mask=m2)
        if HAS_D:
            dD_acc += tl.sum(dy * u, axis=0)
        # adjoint h_t = dy_t C_t + a_{t+1} h_{t+1}
        an = tl.exp2(dln[:, :, None] * A2[None, :, :])
        g = dy[:, :, None] * Ct[:, None, :]
        ccum, hs = _reverse_scan(an, g, REV)
        h = hs + ccum * H[None, :, :]
        H = tl.sum(tl.where(offs_t[:, None, None] == 0, h, 0.0), axis=0)
        hB = tl.sum(h * Bt[:, None, :], axis=2)  # (T, BD)
        du = dl * hB + Dv[None, :] * dy
        tl.store(du_ptr + o_off, du.to(du_ptr.dtype.element_ty), mask=m2)
        qq = h * (x - bx)  # h_t a_t x_{t-1}
        ddl = tl.sum(qq * A[None, :, :], axis=2) + u * hB
        dA_acc += tl.sum(qq * dl[:, :, None], axis=0)
        if SOFTPLUS:
            ddl = ddl * _dsoftplus(raw)
        ddl = tl.where(m2, ddl, 0.0)
        tl.store(ddt_ptr + o_off, ddl.to(ddt_ptr.dtype.element_ty), mask=m2)
        db_acc += tl.sum(ddl, axis=0)
        dBt = tl.sum(h * dlu[:, :, None], axis=1)  # (T, NP)
        dCt = tl.sum(x * dy[:, :, None], axis=1)
        bc_off = (b * dstate + offs_n[None, :]) * L + t[:, None]
        if ATOMIC_BC:
            tl.atomic_add(dB_ptr + bc_off, dBt, mask=mn)
            tl.atomic_add(dC_ptr + bc_off, dCt, mask=mn)
        else:
            tl.store(dB_ptr + bc_off, dBt.to(dB_ptr.dtype.element_ty), mask=mn)
            tl.store(dC_ptr + bc_off, dCt.to(dC_ptr.dtype.element_ty), mask=mn)
    # acc = [dA (dim, dstate) | dD (dim) | ddelta_bias (dim)], fp32, reduced over batch and parts
    tl.atomic_add(acc_ptr + offs_d[:, None] * dstate + offs_n[None, :], dA_acc, mask=dn_mask)
    if HAS_D:
        tl.atomic_add(acc_ptr + dim * dstate + offs_d, dD_acc, mask=d_mask)
    if HAS_BIAS:
        tl.atomic_add(acc_ptr + dim * dstate + dim + offs_d, db_acc, mask=d_mask)


# ----------------------------------------------------------------------------------------------
# launch configuration

_SM_COUNT = {}


def _sm_count(device):
    if device.type != "cuda":
        return 4  # interpreter: a few "SMs", so that small test shapes exercise the split path
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _SM_COUNT:
        _SM_COUNT[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
    return _SM_COUNT[idx]


def _cdiv(a, b):  # triton.cdiv is a constexpr_function: slow in host code
    return -(-a // b)


def _pow2(n):
    return 1 << max(int(n) - 1, 0).bit_length()


def _parse_env_config(spec):
    spec = spec.strip()
    if not spec:
        return {}
    out = {}
    for item in spec.split(","):
        key, _, val = item.partition("=")
        key = key.strip().upper()
        if key not in ("BD", "BD_BWD", "T", "P", "WARPS", "WARPS_BWD", "REV", "KERNEL", "BC",
                       "MAXNREG", "PF", "FMAXNREG", "T_FWD", "P_FWD", "LB"):
            raise ValueError(f"MAMBASEG_TRITON_CONFIG: unknown key {key!r} in {spec!r}")
        out[key] = int(val)
    return out


def make_config(batch, dim, length, dstate, device, config=None, graphed=False):
    """Launch configuration (dict) for one problem; cached. See `_make_config`. ``graphed``:
    the launches are being captured into a CUDA graph (only the GPU's time counts)."""
    env = os.environ.get("MAMBASEG_TRITON_CONFIG", "")
    key = tuple(sorted(config.items())) if config else ()
    return dict(_make_config(batch, dim, length, dstate, device.type, device.index, key, env,
                             bool(graphed)))


@functools.lru_cache(maxsize=1024)
def _make_config(batch, dim, length, dstate, dev_type, dev_index, config, env, graphed=False):
    """Block sizes and split factor for one problem; ``config`` / MAMBASEG_TRITON_CONFIG override.

    Keys: KERNEL (2, the default: the lean layout of scan_triton_lean; 1: the tile layout of
    this module), T (chunk length), BD (channels per program, forward), BD_BWD (backward), P
    (parts along L), WARPS, WARPS_BWD; KERNEL=1 only: REV (1: the backward uses
    tl.associative_scan(reverse=True)); KERNEL=2 only: BC (2, its default: dB/dC atomics per
    channel; 1: dB/dC reduced over the channel block first), PF (1, its default: the backward
    loads the next state's rows while it solves one; 0: no), MAXNREG / FMAXNREG (ptxas register
    caps of its main backward / forward kernel; 0: none), T_FWD / P_FWD (the forward's own chunk
    length, a multiple of T, and parts along L; T_FWD > T needs P_FWD = 1: the forward then
    saves the states entering each of the backward's chunks from inside its own), LB (1, its
    default where P > 1 and the backward has fewer than 2**24 programs: the split backward is
    one launch, each part publishing its summary for the parts before it and waiting for those
    of the parts after it; 0: a carry pass first).
    Defaults, KERNEL=2: T = 128 (32 when L % 16 != 0) and at least N, BD = BD_BWD = WARPS = 4
    (one channel per warp: time over the 32 lanes, 4 steps per lane, or 1 when L % 16 != 0),
    MAXNREG = 128 for its backward kernel (L % 16 == 0 and at most 4 tile elements per thread,
    else none), FMAXNREG = 64 for its forward kernel on the same condition when its programs
    are more than 6 per SM. KERNEL=1: T = 16; N spread over min(N, 32) lanes and channels over the
    remaining lanes times the warps, so that every lane owns one (channel, state) pair and holds
    the T steps of its chunk in registers. Both: P > 1 only when batch x the backward's channel
    blocks cannot fill about four programs per SM; the forward's T_FWD = T and P_FWD = P,
    except (KERNEL=2, L % 16 == 0) for a problem that the backward splits (P > 1) and whose
    launches are not being captured into a CUDA graph (``graphed``): there the host's time to
    issue a call is above the GPU's time, and the forward runs as one launch instead of two (the
    split forward's fix pass), P_FWD = 1 with T_FWD = min(1024, L) (at least T) and BD = 1 (one
    channel per program, its 1024 steps over 4 warps). Its GPU time is longer (H200: 18 against
    10 us plus the fix pass at (8, 12, 1024), 69 against 21 plus the fix pass at (8, 16, 4096)),
    which is why a graph capture keeps the split.
    """
    cfg = dict(_parse_env_config(env))
    cfg.update(dict(config))
    device = torch.device(dev_type, dev_index) if dev_index is not None else torch.device(dev_type)
    kernel = int(cfg.get("KERNEL") or 2)
    if kernel not in (1, 2):
        raise ValueError(f"selective_scan_triton: KERNEL must be 1 or 2, got {kernel}")
    NP = _pow2(max(dstate, 1))
    warps = cfg.get("WARPS") or 4
    warps_bwd = cfg.get("WARPS_BWD") or warps
    if kernel == 2:
        # Its tiles take the layout of their loads along time: with L % 16 == 0 these are
        # vectorised (runs of 4 fp32 steps per lane, T / 4 lanes per channel), otherwise one
        # step per lane (T lanes per channel). Defaults: the T that puts a channel on the 32
        # lanes of a warp, and a channel block that covers the warps.
        aligned = length % 16 == 0
        T = max(_pow2(cfg.get("T") or (128 if aligned else 32)), NP)
        lanes_t = min(32, T // 4 if aligned else T)
        BD = _pow2(cfg.get("BD") or warps * (32 // lanes_t))
        BD_BWD = _pow2(cfg.get("BD_BWD") or warps_bwd * (32 // lanes_t))
    else:
        T = _pow2(cfg.get("T") or 16)
        lanes_bd = max(1, 32 // min(NP, 32))
        BD = _pow2(cfg.get("BD") or lanes_bd * warps)
        BD_BWD = _pow2(cfg.get("BD_BWD") or lanes_bd * warps_bwd)
    n_chunks = _cdiv(length, T)
    if cfg.get("P"):
        P = max(1, min(int(cfg["P"]), n_chunks))
    else:
        progs = batch * _cdiv(dim, BD_BWD)
        target = 4 * _sm_count(device)
        P = 1 if 2 * progs >= target else min(n_chunks, _cdiv(target, progs))
    cpp = _cdiv(n_chunks, P)
    P = _cdiv(n_chunks, cpp)
    # the forward's own chunk length and parts (lean layout; the tile layout shares T and P)
    T_FWD = T if kernel == 1 else max(_pow2(cfg.get("T_FWD") or T), T)
    if kernel == 2 and P > 1 and aligned and not graphed and not any(
            k in cfg for k in ("T_FWD", "P_FWD", "BD")):  # eager, split: one forward launch
        T_FWD, BD = max(min(1024, _pow2(length)), T), 1
    P_FWD = P if kernel == 1 else (cfg.get("P_FWD") or (1 if T_FWD > T else P))
    if T_FWD > T and P_FWD > 1:
        raise ValueError(f"selective_scan_triton: T_FWD={T_FWD} > T={T} needs P_FWD=1, got "
                         f"P_FWD={P_FWD}")
    n_chunks_fwd = _cdiv(length, T_FWD)
    cpp_fwd = _cdiv(n_chunks_fwd, max(1, min(int(P_FWD), n_chunks_fwd)))
    P_FWD = _cdiv(n_chunks_fwd, cpp_fwd)
    out = {"BD": BD, "BD_BWD": BD_BWD, "NP": NP, "T": T, "P": P, "cpp": cpp,
           "n_chunks": n_chunks, "WARPS": warps, "WARPS_BWD": warps_bwd,
           "REV": 1 if cfg.get("REV") else 0, "T_FWD": T_FWD, "P_FWD": P_FWD,
           "cpp_fwd": cpp_fwd, "n_chunks_fwd": n_chunks_fwd}
    if kernel == 2:  # (no keys of its own for KERNEL=1)
        out["KERNEL"] = 2
        out["BC"] = 1 if cfg.get("BC") == 1 else 2
        # the backward loads state n + 1's rows while it solves state n (PF=0: no)
        out["PF"] = 0 if cfg.get("PF") == 0 else 1
        # a split backward in one launch (look-back between its parts; LB=0: a carry pass first).
        # Its tickets count in fp32 (the accumulator's dtype), exact below 2**24 programs
        bwd_progs = batch * _cdiv(dim, BD_BWD) * P
        out["LB"] = 0 if P == 1 or cfg.get("LB") == 0 or bwd_progs >= 1 << 24 else 1
        # ptxas cap for the forward: 64 (8 blocks per SM instead of 6 at its 78 registers, for
        # a few bytes of spills) where its programs do not all fit on the GPU at once
        fmx = cfg.get("FMAXNREG")
        if fmx is None:
            fwd_progs = batch * _cdiv(dim, BD) * P_FWD
            fmx = 64 if aligned and BD * T_FWD <= 128 * warps and \
                fwd_progs > 6 * _sm_count(device) else 0
        if fmx:
            out["FMAXNREG"] = int(fmx)
        # ptxas cap for the backward: 128 (4 blocks of 4 warps per SM; no spills on sm_90 at
        # 4 tile elements per thread) unless set (MAXNREG=0: none) or the tiles are larger
        mx = cfg.get("MAXNREG")
        mx = (128 if aligned and BD_BWD * T <= 128 * warps_bwd else 0) if mx is None else int(mx)
        if mx:
            out["MAXNREG"] = mx
    return out


@dataclasses.dataclass(frozen=True)
class KernelSet:
    """The four kernels of one layout (forward, split fix, split backward carry, backward) and
    what their launches differ in; the launch code below serves every set."""

    fwd: object
    fix: object
    carry: object
    bwd: object
    #: the backward kernels take the REV key
    rev: bool
    #: the backward's ATOMIC_BC (how dB/dC are reduced) from the config and the channel blocks
    bc_mode: Callable[[dict, int], int]
    #: extra launch options of the backward kernel
    bwd_options: Callable[[dict], dict]
    #: extra constexprs of the forward kernel
    fwd_options: Callable[[dict], dict] = lambda cfg: {}


DEFAULT_KERNELS = KernelSet(_fwd_kernel, _fwd_fix_kernel, _bwd_carry_kernel, _bwd_kernel,
                            rev=True, bc_mode=lambda cfg, n_dblk: n_dblk > 1,
                            bwd_options=lambda cfg: {})


def _kernels(cfg) -> KernelSet:
    if cfg.get("KERNEL") == 2:
        from mambaseg.ops.scan_triton_lean import LEAN_KERNELS

        return LEAN_KERNELS
    return DEFAULT_KERNELS


# ----------------------------------------------------------------------------------------------
# per-problem plans: everything about the launches that does not change from call to call


class _Workspace:
    """Offsets (elements) of named fp32 buffers in one allocation; each starts on 64 bytes
    unless added with ``align=False`` (right after the previous one)."""

    def __init__(self):
        self.end, self.offset, self.numel = 0, {}, {}

    @property
    def size(self):
        return _cdiv(self.end, 16) * 16

    def add(self, name, numel, align=True):
        self.offset[name] = start = self.size if align else self.end
        self.numel[name] = numel
        self.end = start + numel

    def splitter(self, names):
        """(sizes, index): ``buf.split_with_sizes(sizes)[index[k]]`` is the 1-D view of buffer
        ``names[k]`` (one tensor operation for all the views, where slicing takes one each)."""
        sizes, index, pos = [], [], 0
        for name in names:
            if self.offset[name] > pos:  # padding
                sizes.append(self.offset[name] - pos)
            index.append(len(sizes))
            sizes.append(self.numel[name])
            pos = self.offset[name] + self.numel[name]
        if self.size > pos:
            sizes.append(self.size - pos)
        return sizes, tuple(index)


def _kernel_inputs(u, delta, A, Bm, Cm, D, z, bias):
    """The kernels' 8 input tensors in their order, absent ones replaced by a placeholder that
    the kernels' flags keep them from touching."""
    return (u, delta, A, Bm, Cm, D if D is not None else A, z if z is not None else u,
            bias if bias is not None else A)


#: which of those the split forward's fix kernel takes (all but B)
_FIX_INPUTS = (0, 1, 2, 4, 5, 6, 7)


class _Plan:
    """The launches of one problem signature (shapes, strides, dtypes, flags, configuration).

    Per call only the buffers are allocated and the kernels launched, their pointers passed as
    ints (`mambaseg.ops.triton_launch.Launcher`). The forward allocates the output, one fp32
    workspace (the saved chunk states, the pre-gate output kept for dz (fp32 whatever the input
    dtype) and the summaries of a split forward) and, when a backward will follow, the
    backward's fp32 accumulator (dA, dD, ddelta_bias, and dB, dC when added atomically; its
    first kernel zeroes them, which spares the backward an allocation and a fill launch; then
    the summaries of a split backward, which need no zeros). A slot list names the buffer
    arguments of a kernel by workspace offset; ``None`` stands for the call's output (the fix
    kernel's real output; elsewhere a placeholder argument that the kernel does not touch, flags
    switch its use off). The workspace's layout inside each buffer is the kernels' own (the saved
    chunk states are (B, n_chunks, NP, D) for the lean kernels, (B, D, n_chunks, NP) for the tile
    kernels, with the backward's chunk length).
    """

    def __init__(self, cfg, shape, dstate, device, strides, has_d, has_z, has_bias, softplus,
                 save):
        self.K = K = _kernels(cfg)
        self.cfg, self.shape, self.dstate, self.device, self.strides = (cfg, shape, dstate, device,
                                                                       strides)
        self.has_d, self.has_z, self.has_bias, self.softplus = has_d, has_z, has_bias, softplus
        self.save = save
        batch, dim, length = shape
        NP, P, PF = cfg["NP"], cfg["P"], cfg["P_FWD"]
        self.split = P > 1  # the backward's
        self.fsplit = fsplit = PF > 1  # the forward's
        self.dev_index = device.index if device.type == "cuda" else None
        ws = self.ws = _Workspace()  # forward: [states | ybuf (split: partial, then pre-gate y)
        if save:                     #           or ysave (pre-gate y) | pst | pds]
            ws.add("states", batch * cfg["n_chunks"] * NP * dim)
        if fsplit:
            ws.add("ybuf", batch * dim * length)
            ws.add("pst", batch * PF * NP * dim)
            ws.add("pds", batch * PF * dim)
        elif save and has_z:
            ws.add("ysave", batch * dim * length)
        o = ws.offset.get
        ysave = (o("ybuf") if fsplit else o("ysave")) if save and has_z else None
        # (ybuf, ysave, states, pst, pds) of the forward kernels; (ybuf, out, states, pst, pds)
        # of the fix kernel
        self.fwd_slots = (o("ybuf"), ysave, o("states"), o("pst"), o("pds"))
        self.fix_slots = (o("ybuf"), None, o("states"), o("pst"), o("pds"))
        self.ysave_slot = ysave
        # the backward's accumulator: [dA, dD, ddelta_bias | dB | dC (when added atomically) |
        # phl | pes (split summaries)]; the forward zeroes it up to the summaries
        n_dblk_bwd = _cdiv(dim, cfg["BD_BWD"])
        self.atomic_bc = atomic_bc = K.bc_mode(cfg, n_dblk_bwd)
        acc = self.acc = _Workspace()
        acc.add("dA", dim * dstate)
        acc.add("dD", dim, align=False)  # dA, dD, dbias: one run (the kernels' layout)
        acc.add("dbias", dim, align=False)
        if self.split and cfg.get("LB"):  # the split backward's ticket and flags (lean kernel)
            acc.add("sync", 1 + batch * n_dblk_bwd * P, align=False)
            assert acc.offset["sync"] == dim * (dstate + 2)  # where the kernel looks for it
        names = ["dA", "dD", "dbias"]
        if atomic_bc:
            acc.add("dB", batch * dstate * length)
            acc.add("dC", batch * dstate * length)
            names += ["dB", "dC"]
        zero_n = acc.size
        if self.split:
            acc.add("phl", batch * P * NP * dim)
            acc.add("pes", batch * P * dim)
        self.acc_split = acc.splitter(names)
        n_dblk = _cdiv(dim, cfg["BD"])
        grid = (batch * n_dblk, PF)
        zero_per = _cdiv(_cdiv(zero_n, grid[0] * grid[1]), 512) * 512 if save else 0
        u_s, dt_s, z_s, B_s, C_s = strides
        ints = (dim, length, dstate, n_dblk, cfg["n_chunks_fwd"], cfg["cpp_fwd"], PF)
        flags = dict(HAS_D=has_d, HAS_Z=has_z, HAS_BIAS=has_bias, SOFTPLUS=softplus, SAVE=save)
        meta = dict(BD=cfg["BD"], NP=NP, T=cfg["T_FWD"], **flags, num_warps=cfg["WARPS"])
        self.fwd = Launcher(K.fwd, grid, ints + (cfg["n_chunks"], zero_n if save else 0, zero_per)
                            + u_s + dt_s + z_s + B_s + C_s,
                            dict(meta, SPLIT=fsplit, TS=cfg["T"], **K.fwd_options(cfg)),
                            self.dev_index)
        self.fix = Launcher(K.fix, grid, ints + u_s + dt_s + z_s + C_s, meta,
                            self.dev_index) if fsplit else None
        self._bwd = {}  # (dout strides, dout dtype) -> backward launches

    # forward ----------------------------------------------------------------------------------

    def forward(self, u, delta, A, Bm, Cm, D, z, bias):
        """(out, workspace, accumulator): what the backward needs (None, None without save)."""
        out = torch.empty(self.shape, dtype=u.dtype, device=self.device)
        ws = torch.empty(self.ws.size, dtype=_F32, device=self.device) if self.ws.size else None
        acc = torch.empty(self.acc.size, dtype=_F32, device=self.device) if self.save else None
        ins = _kernel_inputs(u, delta, A, Bm, Cm, D, z, bias)
        p_out = out.data_ptr()
        p_ws = ws.data_ptr() if ws is not None else p_out
        in_ptrs = [t.data_ptr() for t in ins]

        def slot_ptrs(slots):
            return [p_out if s is None else p_ws + 4 * s for s in slots]

        def slot_tensors(slots):
            return [out if s is None else ws[s:] for s in slots]

        self.fwd(in_ptrs + slot_ptrs(self.fwd_slots) + [acc.data_ptr() if acc is not None
                                                        else p_out],
                 lambda: list(ins) + slot_tensors(self.fwd_slots) + [acc if acc is not None
                                                                     else out])
        if self.fsplit:
            self.fix([in_ptrs[i] for i in _FIX_INPUTS] + slot_ptrs(self.fix_slots),
                     lambda: [ins[i] for i in _FIX_INPUTS] + slot_tensors(self.fix_slots))
        return out, ws, acc

    def warm_forward(self, u, delta, A, Bm, Cm, D, z, bias):
        """Compile the forward's kernels for these inputs without launching them (the buffers:
        small stand-ins with the alignment of the real ones)."""
        ins = _kernel_inputs(u, delta, A, Bm, Cm, D, z, bias)
        out = torch.empty(16, dtype=u.dtype, device=self.device)
        buf = torch.empty(16, dtype=_F32, device=self.device)
        self.fwd.warmup(list(ins) + [out if s is None else buf for s in self.fwd_slots] + [buf])
        if self.fsplit:
            self.fix.warmup([ins[i] for i in _FIX_INPUTS] + [out if s is None else buf
                                                              for s in self.fix_slots])

    # backward ---------------------------------------------------------------------------------

    def _bwd_launches(self, dout):
        key = (dout.stride(), dout.dtype)
        if key not in self._bwd:
            self._bwd[key] = _BackwardPlan(self, dout.stride())
        return self._bwd[key]

    def backward(self, dout, u, delta, A, Bm, Cm, D, z, bias, ws, acc):
        """(du, ddelta, dA, dB, dC, dD, dz, ddelta_bias) in the inputs' dtypes. ``acc``: the
        accumulator the forward zeroed, or None (a second backward through the same forward):
        then a zeroed one is allocated."""
        if acc is None:
            acc = torch.zeros(self.acc.size, dtype=_F32, device=self.device)
        return self._bwd_launches(dout).run(self, dout, u, delta, A, Bm, Cm, D, z, bias, ws, acc)

    def grad_buffers(self, u, delta, z):
        """du, ddelta, dz (None without z): one allocation when their dtypes agree."""
        shape, dev = self.shape, self.device
        if z is None:
            if u.dtype == delta.dtype:
                du, ddelta = torch.empty((2,) + shape, dtype=u.dtype, device=dev).unbind(0)
                return du, ddelta, None
            return (torch.empty(shape, dtype=u.dtype, device=dev),
                    torch.empty(shape, dtype=delta.dtype, device=dev), None)
        if u.dtype == delta.dtype == z.dtype:
            return torch.empty((3,) + shape, dtype=u.dtype, device=dev).unbind(0)
        return (torch.empty(shape, dtype=u.dtype, device=dev),
                torch.empty(shape, dtype=delta.dtype, device=dev),
                torch.empty(shape, dtype=z.dtype, device=dev))


class _BackwardPlan:
    """The backward launches of a plan for one layout of dout."""

    def __init__(self, plan, g_strides):
        cfg, K = plan.cfg, plan.K
        batch, dim, length = plan.shape
        dstate, NP, P = plan.dstate, cfg["NP"], cfg["P"]
        n_dblk = _cdiv(dim, cfg["BD_BWD"])
        u_s, dt_s, z_s, B_s, C_s = plan.strides
        ints = (dim, length, dstate, n_dblk, cfg["n_chunks"], cfg["cpp"], P)
        flags = dict(HAS_Z=plan.has_z, HAS_BIAS=plan.has_bias, SOFTPLUS=plan.softplus)
        if K.rev:
            flags["REV"] = cfg["REV"]
        meta = dict(BD=cfg["BD_BWD"], NP=NP, T=cfg["T"], **flags, num_warps=cfg["WARPS_BWD"])
        self.carry = Launcher(K.carry, (batch * n_dblk, P - 1),
                              ints + dt_s + z_s + C_s + g_strides, meta,
                              plan.dev_index) if plan.split and not cfg.get("LB") else None
        self.bwd = Launcher(K.bwd, (batch * n_dblk, P),
                            ints + u_s + dt_s + z_s + B_s + C_s + g_strides,
                            dict(meta, HAS_D=plan.has_d, SPLIT=plan.split,
                                 ATOMIC_BC=plan.atomic_bc, **K.bwd_options(cfg)), plan.dev_index)

    def run(self, plan, dout, u, delta, A, Bm, Cm, D, z, bias, ws, acc):
        batch, dim, length = plan.shape
        dstate, dev = plan.dstate, plan.device
        off = plan.acc.offset
        du, ddelta, dz = plan.grad_buffers(u, delta, z)
        sizes, index = plan.acc_split
        views = acc.split_with_sizes(sizes)
        if plan.atomic_bc:
            dB = views[index[3]].view(batch, dstate, length)
            dC = views[index[4]].view(batch, dstate, length)
        else:
            dB = torch.empty(batch, dstate, length, dtype=Bm.dtype, device=dev)
            dC = torch.empty(batch, dstate, length, dtype=Cm.dtype, device=dev)
        p_acc, p_ws = acc.data_ptr(), ws.data_ptr()
        ysave = plan.ysave_slot
        p_phl = p_acc + 4 * off["phl"] if plan.split else p_acc
        p_pes = p_acc + 4 * off["pes"] if plan.split else p_acc
        ins = _kernel_inputs(u, delta, A, Bm, Cm, D, z, bias) + (dout,)
        ptrs = [t.data_ptr() for t in ins]
        if self.carry is not None:  # the carry kernel takes delta, A, C, z, delta_bias, dout
            carry = (1, 2, 4, 6, 7, 8)
            self.carry([ptrs[i] for i in carry] + [p_phl, p_pes],
                       lambda: [ins[i] for i in carry] + [acc[off["phl"]:], acc[off["pes"]:]])
        outs = (du, ddelta, dz if dz is not None else du, dB, dC)
        ptrs += [p_ws + 4 * ysave if ysave is not None else ptrs[0],
                 p_ws + 4 * plan.ws.offset["states"], p_phl, p_pes]
        ptrs += [t.data_ptr() for t in outs]
        ptrs.append(p_acc)
        self.bwd(ptrs, lambda: list(ins) + [
            ws[ysave:] if ysave is not None else u, ws[plan.ws.offset["states"]:],
            acc[off["phl"]:] if plan.split else acc, acc[off["pes"]:] if plan.split else acc,
            *outs, acc])
        dA = views[index[0]].view(dim, dstate)
        dD = views[index[1]] if D is not None else None
        dbias = views[index[2]] if bias is not None else None
        if A.dtype != _F32:
            dA = dA.to(A.dtype)
        if dD is not None and D.dtype != _F32:
            dD = dD.to(D.dtype)
        if dbias is not None and bias.dtype != _F32:
            dbias = dbias.to(bias.dtype)
        if plan.atomic_bc:
            if Bm.dtype != _F32:
                dB = dB.to(Bm.dtype)
            if Cm.dtype != _F32:
                dC = dC.to(Cm.dtype)
        return du, ddelta, dA, dB, dC, dD, dz, dbias


#: plan key -> _Plan (a new problem signature adds one; cleared when full)
_PLANS: dict = {}
_MAX_PLANS = 512


def _plan(u, delta, A, Bm, Cm, D, z, bias, softplus, config, save, dev):
    env = os.environ.get("MAMBASEG_TRITON_CONFIG", "")
    ckey = tuple(sorted(config.items())) if config else ()
    zz = z if z is not None else u
    strides = (u.stride(), delta.stride(), zz.stride(), Bm.stride(), Cm.stride())
    dtypes = (u.dtype, delta.dtype, A.dtype, Bm.dtype, Cm.dtype, zz.dtype,
              None if D is None else D.dtype, None if bias is None else bias.dtype)
    graphed = dev >= 0 and torch.cuda.is_current_stream_capturing()
    key = (u.shape, A.shape[1], dev, strides, dtypes, D is not None, z is not None,
           bias is not None, softplus, save, ckey, env, graphed)
    plan = _PLANS.get(key)
    if plan is None:
        if len(_PLANS) >= _MAX_PLANS:
            _PLANS.clear()
        batch, dim, length = u.shape
        dstate = A.shape[1]
        cfg = make_config(batch, dim, length, dstate, u.device, config, graphed)
        args = ((batch, dim, length), dstate, u.device, strides, D is not None, z is not None,
                bias is not None, softplus, save)
        plan = _PLANS[key] = _Plan(cfg, *args)
        gkey = key[:-1] + (True,)
        if not graphed and dev >= 0 and gkey not in _PLANS:
            gcfg = make_config(batch, dim, length, dstate, u.device, config, True)
            if gcfg != cfg:
                # A CUDA graph capture of this call would take another forward configuration
                # (see _make_config): compile its kernels now, while compiling is allowed
                gplan = _PLANS[gkey] = _Plan(gcfg, *args)
                gplan.warm_forward(u, delta, A, Bm, Cm, D, z, bias)
    return plan


class _TritonScan(torch.autograd.Function):

    @staticmethod
    def forward(ctx, u, delta, A, Bm, Cm, D, z, delta_bias, delta_softplus, config, dev):
        if not A.is_contiguous():
            A = A.contiguous()
        if D is not None and not D.is_contiguous():
            D = D.contiguous()
        if delta_bias is not None and not delta_bias.is_contiguous():
            delta_bias = delta_bias.contiguous()
        save = any(ctx.needs_input_grad[:8])
        plan = _plan(u, delta, A, Bm, Cm, D, z, delta_bias, bool(delta_softplus), config, save,
                     dev)
        out, ws, acc = plan.forward(u, delta, A, Bm, Cm, D, z, delta_bias)
        if save:
            ctx.save_for_backward(u, delta, A, Bm, Cm, D, z, delta_bias, ws)
            ctx.plan, ctx.acc = plan, acc
        return out

    @staticmethod
    def backward(ctx, dout):
        acc, ctx.acc = ctx.acc, None  # zeroed by the forward: good for one backward
        grads = ctx.plan.backward(dout, *ctx.saved_tensors, acc)
        return grads + (None, None, None)


def selective_scan_triton(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                          config=None):
    """The selective scan with the fused Triton kernels (CUDA tensors, or CPU tensors when
    TRITON_INTERPRET=1). ``config`` overrides the launch configuration (see make_config)."""
    if u.numel() == 0:  # nothing to launch
        from mambaseg.ops.scan_torch import selective_scan_torch

        return selective_scan_torch(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias,
                                    delta_softplus=delta_softplus)
    dev = u.get_device()
    for name, t in (("delta", delta), ("A", A), ("B", B), ("C", C), ("D", D), ("z", z),
                    ("delta_bias", delta_bias)):
        if t is not None and t.get_device() != dev:
            raise ValueError(f"selective_scan_triton: {name} is on {t.device}, u on {u.device}; "
                             "all tensors must be on one device")
    with no_autocast("cuda" if dev >= 0 else "cpu"):
        if dev >= 0 and dev != torch.cuda.current_device():
            with torch.cuda.device(dev):
                return _TritonScan.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                         config, dev)
        return _TritonScan.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus, config, dev)
