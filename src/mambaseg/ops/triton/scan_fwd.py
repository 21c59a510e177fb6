"""Forward kernels of the selective scan: the chunked scan and, for a split along L, the fix
pass that gives each part its incoming state (design: docs/scan.md, "The Triton kernels").

Shapes: u, delta, z, out: (B, D, L); A: (D, N); B, C: (B, N, L); D, delta_bias: (D,).
Grid: (B x channel blocks, parts along L).
"""
from __future__ import annotations

import triton
import triton.language as tl

from mambaseg.ops.triton._helpers import (NO_SPEC, chunk_steps, column, combine, load_delta,
                                          load_row, program_block)


@triton.jit
def _zero_strip(acc_ptr, zero_n, zero_per, ZB: tl.constexpr):
    """Zero this program's strip of ``acc_ptr[0:zero_n]``, ``zero_per`` elements (a multiple of
    ZB) per program: the forward zeroes the backward's accumulator, which spares the backward
    an allocation and a fill launch."""
    pid = tl.program_id(1) * tl.num_programs(0) + tl.program_id(0)
    offs = pid.to(tl.int64) * zero_per + tl.arange(0, ZB)
    for i in range(0, zero_per, ZB):
        tl.store(acc_ptr + i + offs, tl.zeros((ZB,), tl.float32), mask=i + offs < zero_n)


@triton.jit
def _finish_output(y, u, Dv, z_ptrs, ysave_ptrs, out_ptrs, mask, HAS_D: tl.constexpr,
                   HAS_Z: tl.constexpr, SAVE: tl.constexpr):
    """y + D u; the pre-gate y saved for dz (SAVE and HAS_Z); times silu(z); stored.
    ``Dv``: D broadcast to y's tile; ``*_ptrs``: pointer tiles."""
    if HAS_D:
        y += Dv * u
    if HAS_Z:
        if SAVE:
            tl.store(ysave_ptrs, y.to(ysave_ptrs.dtype.element_ty), mask=mask)
        zz = tl.load(z_ptrs, mask=mask, other=0.0).to(tl.float32)
        y = y * zz * tl.sigmoid(zz)
    tl.store(out_ptrs, y.to(out_ptrs.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=NO_SPEC)
def scan_fwd_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr,
    out_ptr, ysave_ptr, st_ptr, pst_ptr, pds_ptr, acc_ptr,
    dim, L, dstate, n_dblk, n_chunks, cpp, P, ncs, zero_n, zero_per,
    s_ub, s_ud, s_ul, s_db, s_dd, s_dl, s_zb, s_zd, s_zl,
    s_Bb, s_Bn, s_Bl, s_Cb, s_Cn, s_Cl,
    BD: tl.constexpr, NP: tl.constexpr, T: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    SAVE: tl.constexpr, SPLIT: tl.constexpr, TS: tl.constexpr,
):
    """Scan chunks of T steps, y = sum_n C_n x_n, then D, the gate and the store (or, SPLIT:
    partial fp32 y and the part's summary: final states and sum of delta).

    out: (B, D, L); ysave: pre-gate y (B, D, L) fp32; st: chunk-entry states (B, ncs, NP, D)
    fp32 for the backward's chunks of TS steps; pst: (B, P, NP, D), pds: (B, P, D) part summaries;
    acc: the backward's accumulator, zeroed here (SAVE).
    """
    # R of the backward's chunks per chunk of this kernel (R > 1 only without SPLIT)
    R: tl.constexpr = T // TS
    part = tl.program_id(1)
    if SAVE:
        _zero_strip(acc_ptr, zero_n, zero_per, 512)
    b, offs_d, d_mask, bias, Dv = program_block(bias_ptr, D_ptr, dim, n_dblk, tl.program_id(0),
                                                BD, HAS_BIAS, HAS_D)
    offs_t = tl.arange(0, T)
    cols = offs_t[None, :]  # (1, T) column indices
    Sc = tl.zeros((BD, T), tl.float32)  # column n: state n entering the chunk
    dsum = tl.zeros((BD,), tl.float32)
    row = b * dim + offs_d
    c0 = part * cpp
    c1 = tl.minimum(c0 + cpp, n_chunks)
    for c in range(c0, c1):
        t, t_mask, m2 = chunk_steps(c, offs_t, L, d_mask, T)
        dl, raw = load_delta(dt_ptr + b * s_db, offs_d[:, None] * s_dd + t[None, :] * s_dl, m2,
                             bias, HAS_BIAS, SOFTPLUS)
        u = tl.load(u_ptr + b * s_ub + offs_d[:, None] * s_ud + t[None, :] * s_ul, mask=m2,
                    other=0.0).to(tl.float32)
        dlu = dl * u
        y = tl.zeros((BD, T), tl.float32)
        Sn = tl.zeros((BD, T), tl.float32)  # column n: state n leaving the chunk
        xp = tl.zeros((BD, T), tl.float32)  # the previous state's states
        for n in range(0, dstate):
            A2 = tl.load(A_ptr + offs_d * dstate + n, mask=d_mask, other=0.0).to(tl.float32)
            A2 = A2 * 1.4426950408889634  # exp(x A) = exp2(x A2)
            Bn = load_row(B_ptr + b * s_Bb + n * s_Bn + t * s_Bl, BD, t_mask)
            Cn = load_row(C_ptr + b * s_Cb + n * s_Cn + t * s_Cl, BD, t_mask)
            s = column(Sc, cols, n)  # (Sc does not change within the chunk: no chain over n)
            if SAVE:
                tl.store(st_ptr + ((b * ncs + c * R) * NP + n) * dim + offs_d, s, mask=d_mask)
            a = tl.exp2(dl * A2[:, None])
            bx = dlu * Bn
            bx = tl.where(cols == 0, bx + a * s[:, None], bx)
            _, x = tl.associative_scan((a, bx), axis=1, combine_fn=combine)
            if SAVE and R > 1:  # the states entering the backward's other chunks in this one
                k = (offs_t + 1) // TS
                sel = ((offs_t + 1) % TS == 0) & (k < R) & (c * R + k < ncs)
                tl.store(st_ptr + ((b * ncs + c * R + k[None, :]) * NP + n) * dim
                         + offs_d[:, None], x, mask=d_mask[:, None] & sel[None, :])
            y += x * Cn
            # the previous state's exit state (its last column): taken out one state late so
            # that the reduction overlaps this state's scan instead of ending the iteration
            Sn = tl.where(cols == n - 1, column(xp, cols, T - 1)[:, None], Sn)
            xp = x
        Sc = tl.where(cols == dstate - 1, column(xp, cols, T - 1)[:, None], Sn)
        o_off = row[:, None] * L + t[None, :]
        if SPLIT:
            dsum += tl.sum(dl, axis=1)
            tl.store(out_ptr + o_off, y, mask=m2)  # fp32 partial y, finished by the fix kernel
        else:
            _finish_output(y, u, Dv[:, None],
                           z_ptr + b * s_zb + offs_d[:, None] * s_zd + t[None, :] * s_zl,
                           ysave_ptr + o_off, out_ptr + o_off, m2, HAS_D, HAS_Z, SAVE)
    if SPLIT:
        prow = b * P + part
        tl.store(pst_ptr + (prow * NP + offs_t[None, :]) * dim + offs_d[:, None], Sc,
                 mask=d_mask[:, None] & (offs_t[None, :] < NP))
        tl.store(pds_ptr + prow * dim + offs_d, dsum, mask=d_mask)


@triton.jit(do_not_specialize=NO_SPEC)
def scan_fwd_fix_kernel(
    u_ptr, dt_ptr, A_ptr, C_ptr, D_ptr, z_ptr, bias_ptr,
    ybuf_ptr, out_ptr, st_ptr, pst_ptr, pds_ptr,
    dim, L, dstate, n_dblk, n_chunks, cpp, P,
    s_ub, s_ud, s_ul, s_db, s_dd, s_dl, s_zb, s_zd, s_zl, s_Cb, s_Cn, s_Cl,
    BD: tl.constexpr, NP: tl.constexpr, T: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    SAVE: tl.constexpr,
):
    """Split forward, pass 2: each part's incoming state from the earlier parts' summaries,
    added to the partial y (ybuf) and to the saved states; then D and the gate. ybuf ends up
    holding the pre-gate y."""
    part = tl.program_id(1)
    b, offs_d, d_mask, bias, Dv = program_block(bias_ptr, D_ptr, dim, n_dblk, tl.program_id(0),
                                                BD, HAS_BIAS, HAS_D)
    offs_t = tl.arange(0, T)
    cols = offs_t[None, :]  # (1, T) column indices
    dn_mask = d_mask[:, None] & (offs_t[None, :] < dstate)
    # column n: A[:, n] (log2 units); the true state entering this part, from the summaries of
    # the parts before it
    A2t = tl.load(A_ptr + offs_d[:, None] * dstate + offs_t[None, :], mask=dn_mask,
                  other=0.0).to(tl.float32) * 1.4426950408889634
    Sc = tl.zeros((BD, T), tl.float32)
    for q in range(0, part):
        prow = b * P + q
        ds = tl.load(pds_ptr + prow * dim + offs_d, mask=d_mask, other=0.0)
        sq = tl.load(pst_ptr + (prow * NP + offs_t[None, :]) * dim + offs_d[:, None],
                     mask=d_mask[:, None] & (offs_t[None, :] < NP), other=0.0)
        Sc = tl.exp2(A2t * ds[:, None]) * Sc + sq
    row = b * dim + offs_d
    run = tl.zeros((BD,), tl.float32)  # sum of delta from the part start to the chunk start
    c0 = part * cpp
    c1 = tl.minimum(c0 + cpp, n_chunks)
    for c in range(c0, c1):
        t, t_mask, m2 = chunk_steps(c, offs_t, L, d_mask, T)
        o_off = row[:, None] * L + t[None, :]
        y = tl.load(ybuf_ptr + o_off, mask=m2, other=0.0)
        if part > 0:
            dl, raw = load_delta(dt_ptr + b * s_db, offs_d[:, None] * s_dd + t[None, :] * s_dl,
                                 m2, bias, HAS_BIAS, SOFTPLUS)
            cs = tl.cumsum(dl, axis=1) + run[:, None]
            for n in range(0, dstate):
                A2 = tl.load(A_ptr + offs_d * dstate + n, mask=d_mask,
                             other=0.0).to(tl.float32) * 1.4426950408889634
                Cn = load_row(C_ptr + b * s_Cb + n * s_Cn + t * s_Cl, BD, t_mask)
                s = column(Sc, cols, n)
                y += tl.exp2(A2[:, None] * cs) * (s[:, None] * Cn)
                if SAVE:
                    s_off = ((b * n_chunks + c) * NP + n) * dim + offs_d
                    st = tl.load(st_ptr + s_off, mask=d_mask, other=0.0)
                    tl.store(st_ptr + s_off, st + tl.exp2(A2 * run) * s, mask=d_mask)
            run += tl.sum(dl, axis=1)
        u = tl.load(u_ptr + b * s_ub + offs_d[:, None] * s_ud + t[None, :] * s_ul, mask=m2,
                    other=0.0).to(tl.float32)
        _finish_output(y, u, Dv[:, None],  # the pre-gate output, for dz, into ybuf
                       z_ptr + b * s_zb + offs_d[:, None] * s_zd + t[None, :] * s_zl,
                       ybuf_ptr + o_off, out_ptr + o_off, m2, HAS_D, HAS_Z, SAVE)


