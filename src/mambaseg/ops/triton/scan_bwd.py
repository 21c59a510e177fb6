"""Backward kernels of the selective scan: the main backward and, for a split along L with
config LB=0, the carry pass that computes the parts' summaries first (design: docs/scan.md,
"The Triton kernels").

Shapes: u, delta, z, dout and du, ddelta, dz: (B, D, L); A: (D, N); B, C and dB, dC: (B, N, L);
D, delta_bias: (D,). Grid: (B x channel blocks, parts along L).
"""
from __future__ import annotations

import triton
import triton.language as tl

from mambaseg.ops.triton._helpers import (NO_SPEC, chunk_steps, column, combine, dsoftplus,
                                          load_delta, load_row, program_block)


@triton.jit
def _flip(x, offs_t, BD: tl.constexpr, T: tl.constexpr):
    """x[:, T - 1 - j]: time order reversed within the chunk. A tl.gather along the lanes
    (fewer shuffles than tl.flip when time is over the lanes)."""
    return tl.gather(x, tl.broadcast_to((T - 1 - offs_t)[None, :], (BD, T)), axis=1)


@triton.jit
def _add2(a1, b1, a2, b2):
    return a1 + a2, b1 + b2


@triton.jit
def _bwd_rows(A_ptr, B_ptr, C_ptr, st_ptr, offs_d, d_mask, dim, t, t_mask, dstate, s_Bn, s_Bl,
              s_Cn, s_Cl, n, BD: tl.constexpr):
    """State n's A[:, n], rows B[n] and C[n] and its saved chunk-entry state (``st_ptr``: the
    chunk's (NP, dim) block); zeros when n == dstate."""
    ok = n < dstate
    An = tl.load(A_ptr + offs_d * dstate + n, mask=d_mask & ok, other=0.0).to(tl.float32)
    Bn = load_row(B_ptr + n * s_Bn + t * s_Bl, BD, t_mask & ok)
    Cn = load_row(C_ptr + n * s_Cn + t * s_Cl, BD, t_mask & ok)
    s = tl.load(st_ptr + n * dim + offs_d, mask=d_mask & ok, other=0.0)
    return An, Bn, Cn, s


@triton.jit
def _next_delta(dt_ptr, offs_d, d_mask, t0, offs_t, L, s_dd, s_dl, bias, HAS_BIAS: tl.constexpr,
                SOFTPLUS: tl.constexpr):
    """delta' at step t0 (0 at or past L) as (BD,), loaded as the first column of a (BD, T)
    tile so that it takes the tiles' layout."""
    t = t0 + offs_t
    m = d_mask[:, None] & (t < L)[None, :]
    dl, raw = load_delta(dt_ptr, offs_d[:, None] * s_dd + t[None, :] * s_dl, m, bias, HAS_BIAS,
                         SOFTPLUS)
    return column(dl, offs_t[None, :], 0)


@triton.jit
def _bwd_chunk(dt_ptr, offs_d, d_mask, c, offs_t, L, s_dd, s_dl, bias, dl_next,
               HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, BD: tl.constexpr, T: tl.constexpr):
    """What both backward kernels start a chunk with: its steps ``t``, their mask, the (BD, T)
    mask, delta' and delta + bias in time order, and delta' at t + 1 time-reversed
    (``_shift_flip``; ``dl_next``: delta' at the chunk's last step + 1)."""
    t, t_mask, m2 = chunk_steps(c, offs_t, L, d_mask, T)
    dl, raw = load_delta(dt_ptr, offs_d[:, None] * s_dd + t[None, :] * s_dl, m2, bias, HAS_BIAS,
                         SOFTPLUS)
    return t, t_mask, m2, dl, raw, _shift_flip(dl, dl_next, offs_t, BD, T)


@triton.jit
def _shift_flip(dl, dl_next, offs_t, BD: tl.constexpr, T: tl.constexpr):
    """The time-reversed a_{t+1} operand: column j holds dl at in-chunk step T - j (j >= 1) and
    ``dl_next`` (the next chunk's first step) in column 0. One tl.gather along the lanes."""
    idx = tl.broadcast_to(((T - offs_t) % T)[None, :], (BD, T))
    return tl.where(offs_t[None, :] == 0, dl_next[:, None], tl.gather(dl, idx, axis=1))


@triton.jit
def _summary_ptrs(phl_ptr, pes_ptr, prow, offs_d, d_mask, dim, NP: tl.constexpr, T: tl.constexpr):
    """Where part row ``prow`` (batch x parts) keeps its summary: (BD, T) pointers of the
    adjoint (columns below NP), their mask, and (BD,) pointers of the delta sum."""
    offs_t = tl.arange(0, T)
    return (phl_ptr + (prow * NP + offs_t[None, :]) * dim + offs_d[:, None],
            d_mask[:, None] & (offs_t[None, :] < NP), pes_ptr + prow * dim + offs_d)


@triton.jit
def _store_part_summary(dt_ptr, A_ptr, C_ptr, z_ptr, g_ptr, phl_ptr, pes_ptr, b, offs_d, d_mask,
                        bias, part, dim, L, dstate, n_chunks, cpp, P, s_db, s_dd, s_dl, s_zb, s_zd,
                        s_zl, s_Cb, s_Cn, s_Cl, s_gb, s_gd, s_gl, BD: tl.constexpr,
                        NP: tl.constexpr, T: tl.constexpr, HAS_Z: tl.constexpr,
                        HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """Compute and store a part's summary for the split backward (`_summary_ptrs`): the adjoint
    at its first step from a zero carry ((BD, T) tile, column n for state n) and its sum of
    delta at steps t + 1."""
    dt_ptr += b * s_db
    C_ptr += b * s_Cb
    z_ptr += b * s_zb
    g_ptr += b * s_gb
    offs_t = tl.arange(0, T)
    cols = offs_t[None, :]  # (1, T) column indices
    Hc = tl.zeros((BD, T), tl.float32)  # column n: adjoint of state n at the next chunk's start
    esum = tl.zeros((BD,), tl.float32)
    c0 = part * cpp
    c1 = tl.minimum(c0 + cpp, n_chunks)
    # as in the main backward kernel: loads in time order, reversed tiles made in registers
    dl_next = _next_delta(dt_ptr, offs_d, d_mask, c1 * T, offs_t, L, s_dd, s_dl, bias, HAS_BIAS,
                         SOFTPLUS)
    for i in range(0, c1 - c0):
        c = c1 - 1 - i
        t, t_mask, m2, dl, raw, dlnr = _bwd_chunk(dt_ptr, offs_d, d_mask, c, offs_t, L, s_dd,
                                                  s_dl, bias, dl_next, HAS_BIAS, SOFTPLUS, BD, T)
        dl_next = column(dl, cols, 0)
        dy = tl.load(g_ptr + offs_d[:, None] * s_gd + t[None, :] * s_gl, mask=m2,
                     other=0.0).to(tl.float32)
        if HAS_Z:
            zz = tl.load(z_ptr + offs_d[:, None] * s_zd + t[None, :] * s_zl, mask=m2,
                         other=0.0).to(tl.float32)
            dy = dy * zz * tl.sigmoid(zz)
        for n in range(0, dstate):
            A2 = tl.load(A_ptr + offs_d * dstate + n, mask=d_mask,
                         other=0.0).to(tl.float32) * 1.4426950408889634
            Cn = load_row(C_ptr + n * s_Cn + t * s_Cl, BD, t_mask)
            an = tl.exp2(dlnr * A2[:, None])  # a_{t+1}, reversed
            g = _flip(dy * Cn, offs_t, BD, T)
            g = tl.where(cols == 0, g + an * column(Hc, cols, n)[:, None], g)
            _, h = tl.associative_scan((an, g), axis=1, combine_fn=combine)
            Hc = tl.where(cols == n, column(h, cols, T - 1)[:, None], Hc)
        esum += tl.sum(dlnr, axis=1)  # delta at steps t + 1
    h_ptrs, h_mask, e_ptrs = _summary_ptrs(phl_ptr, pes_ptr, b * P + part, offs_d, d_mask, dim,
                                           NP, T)
    tl.store(h_ptrs, Hc, mask=h_mask)
    tl.store(e_ptrs, esum, mask=d_mask)


@triton.jit(do_not_specialize=NO_SPEC)
def scan_bwd_carry_kernel(
    dt_ptr, A_ptr, C_ptr, z_ptr, bias_ptr, g_ptr, phl_ptr, pes_ptr,
    dim, L, dstate, n_dblk, n_chunks, cpp, P,
    s_db, s_dd, s_dl, s_zb, s_zd, s_zl, s_Cb, s_Cn, s_Cl, s_gb, s_gd, s_gl,
    BD: tl.constexpr, NP: tl.constexpr, T: tl.constexpr,
    HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
):
    """Split backward, pass 1 (config LB=0): every part's summary (`_store_part_summary`)."""
    part = tl.program_id(1) + 1  # part 0's summary is never needed
    b, offs_d, d_mask, bias, Dv = program_block(bias_ptr, bias_ptr, dim, n_dblk,
                                                tl.program_id(0), BD, HAS_BIAS, False)
    _store_part_summary(dt_ptr, A_ptr, C_ptr, z_ptr, g_ptr, phl_ptr, pes_ptr, b, offs_d, d_mask,
                        bias, part, dim, L, dstate, n_chunks, cpp, P, s_db, s_dd, s_dl, s_zb, s_zd,
                        s_zl, s_Cb, s_Cn, s_Cl, s_gb, s_gd, s_gl, BD, NP, T, HAS_Z, HAS_BIAS,
                        SOFTPLUS)


@triton.jit(do_not_specialize=NO_SPEC)
def scan_bwd_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, g_ptr, ysave_ptr, st_ptr,
    phl_ptr, pes_ptr, du_ptr, ddt_ptr, dz_ptr, dB_ptr, dC_ptr, acc_ptr,
    dim, L, dstate, n_dblk, n_chunks, cpp, P,
    s_ub, s_ud, s_ul, s_db, s_dd, s_dl, s_zb, s_zd, s_zl,
    s_Bb, s_Bn, s_Bl, s_Cb, s_Cn, s_Cl, s_gb, s_gd, s_gl,
    BD: tl.constexpr, NP: tl.constexpr, T: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    SPLIT: tl.constexpr, ATOMIC_BC: tl.constexpr, PREFETCH: tl.constexpr,
    LOOKBACK: tl.constexpr,
):
    """Chunks in reverse: the states from the saved chunk-entry states, the adjoint
    h_t = dy_t C_t + a_{t+1} h_{t+1}, and from them every gradient.

    ysave: pre-gate y (B, D, L) fp32; st: chunk-entry states (B, n_chunks, NP, D) fp32;
    phl: (B, P, NP, D), pes: (B, P, D) part summaries (SPLIT); acc: [dA (D, N) | dD (D) |
    ddelta_bias (D) | sync (LOOKBACK: a ticket counter, then one flag per program)], fp32,
    zeroed by the forward; dB, dC: fp32 views of the same buffer when added atomically
    (ATOMIC_BC 1: reduced over the channel block first; 2: per channel), else the outputs.
    """
    sync = acc_ptr + dim * dstate + 2 * dim
    if SPLIT and LOOKBACK:
        # Split backward in one launch: programs take their (row, part) in the order they start
        # (a ticket), the last part first, so that a program only ever waits for programs that
        # started before it (no deadlock, whatever the GPU runs at once)
        nrow = tl.num_programs(0)
        tk = tl.atomic_add(sync, 1.0, sem="relaxed").to(tl.int32)
        pid = tk % nrow
        part = P - 1 - tk // nrow
    else:
        pid = tl.program_id(0)
        part = tl.program_id(1)
    b, offs_d, d_mask, bias, Dv = program_block(bias_ptr, D_ptr, dim, n_dblk, pid, BD,
                                                HAS_BIAS, HAS_D)
    offs_t = tl.arange(0, T)
    cols = offs_t[None, :]  # (1, T) column indices
    dn_mask = d_mask[:, None] & (offs_t[None, :] < dstate)
    # column n: adjoint of state n at the first step of the next chunk (of the next part first)
    Hc = tl.zeros((BD, T), tl.float32)
    if SPLIT:
        if LOOKBACK:
            if part > 0:  # this part's summary for the parts before it, then its flag
                _store_part_summary(dt_ptr, A_ptr, C_ptr, z_ptr, g_ptr, phl_ptr, pes_ptr, b,
                                    offs_d, d_mask, bias, part, dim, L, dstate, n_chunks, cpp, P,
                                    s_db, s_dd, s_dl, s_zb, s_zd, s_zl, s_Cb, s_Cn, s_Cl, s_gb,
                                    s_gd, s_gl, BD, NP, T, HAS_Z, HAS_BIAS, SOFTPLUS)
                tl.debug_barrier()  # every thread's stores, then one release
                tl.atomic_add(sync + 1 + pid * P + part, 1.0, sem="release")
        A2t = tl.load(A_ptr + offs_d[:, None] * dstate + offs_t[None, :], mask=dn_mask,
                      other=0.0).to(tl.float32) * 1.4426950408889634
        for i in range(0, P - 1 - part):
            q = P - 1 - i
            if LOOKBACK:  # wait for part q's flag
                f = tl.atomic_add(sync + 1 + pid * P + q, 0.0, sem="acquire")
                while f == 0.0:
                    f = tl.atomic_add(sync + 1 + pid * P + q, 0.0, sem="acquire")
            h_ptrs, h_mask, e_ptrs = _summary_ptrs(phl_ptr, pes_ptr, b * P + q, offs_d, d_mask,
                                                   dim, NP, T)
            # (.cg: from L2, where the other programs' stores are, never from a stale L1 line)
            es = tl.load(e_ptrs, mask=d_mask, other=0.0, cache_modifier=".cg")
            hq = tl.load(h_ptrs, mask=h_mask, other=0.0, cache_modifier=".cg")
            Hc = hq + tl.exp2(A2t * es[:, None]) * Hc
    dAc = tl.zeros((BD, T), tl.float32)  # column n: dA[:, n]
    dD_acc = tl.zeros((BD,), tl.float32)
    db_acc = tl.zeros((BD,), tl.float32)
    row = b * dim + offs_d
    c0 = part * cpp
    c1 = tl.minimum(c0 + cpp, n_chunks)
    # delta at the first step after this part's last chunk (0 past the end): the time-reversed
    # a_{t+1} of a chunk takes its first column from the chunk after it
    dl_next = _next_delta(dt_ptr + b * s_db, offs_d, d_mask, c1 * T, offs_t, L, s_dd, s_dl, bias,
                          HAS_BIAS, SOFTPLUS)
    for i in range(0, c1 - c0):
        c = c1 - 1 - i
        # Everything is loaded in time order (aligned, vectorised loads that give every tile the
        # same layout: time over the lanes of a warp) and the time-reversed tiles of the adjoint
        # recurrence are made in registers: a reversed load takes a layout of its own (time
        # across warps on Triton 3.6), and the scans in it go through shared memory.
        t, t_mask, m2, dl, raw, dlnr = _bwd_chunk(dt_ptr + b * s_db, offs_d, d_mask, c, offs_t, L,
                                                  s_dd, s_dl, bias, dl_next, HAS_BIAS, SOFTPLUS,
                                                  BD, T)
        dl_next = column(dl, cols, 0)
        u = tl.load(u_ptr + b * s_ub + offs_d[:, None] * s_ud + t[None, :] * s_ul, mask=m2,
                    other=0.0).to(tl.float32)
        gout = tl.load(g_ptr + b * s_gb + offs_d[:, None] * s_gd + t[None, :] * s_gl, mask=m2,
                       other=0.0).to(tl.float32)
        o_off = row[:, None] * L + t[None, :]
        dy = gout
        if HAS_Z:
            zz = tl.load(z_ptr + b * s_zb + offs_d[:, None] * s_zd + t[None, :] * s_zl,
                         mask=m2, other=0.0).to(tl.float32)
            yp = tl.load(ysave_ptr + o_off, mask=m2, other=0.0).to(tl.float32)  # pre-gate output
            sz = tl.sigmoid(zz)
            dy = gout * zz * sz
            dz = gout * yp * sz * (1.0 + zz * (1.0 - sz))
            tl.store(dz_ptr + o_off, dz.to(dz_ptr.dtype.element_ty), mask=m2)
        if HAS_D:
            dD_acc += tl.sum(dy * u, axis=1)
        dlu = dl * u
        hB = tl.zeros((BD, T), tl.float32)  # sum_n h B_n
        qA = tl.zeros((BD, T), tl.float32)  # sum_n h a x_{t-1} A_n
        Hn = tl.zeros((BD, T), tl.float32)  # column n: adjoint of state n at the chunk's start
        hp = tl.zeros((BD, T), tl.float32)  # the previous state's reversed adjoints
        st_c = st_ptr + (b * n_chunks + c) * NP * dim  # the chunk's saved entry states
        if PREFETCH:  # state 0's rows; state n + 1's are loaded while state n is solved
            Ax, Bx, Cx, sx = _bwd_rows(A_ptr, B_ptr + b * s_Bb, C_ptr + b * s_Cb, st_c, offs_d,
                                       d_mask, dim, t, t_mask, dstate, s_Bn, s_Bl, s_Cn, s_Cl, 0,
                                       BD)
        for n in range(0, dstate):
            if PREFETCH:
                An, Bn, Cn, s = Ax, Bx, Cx, sx
                Ax, Bx, Cx, sx = _bwd_rows(A_ptr, B_ptr + b * s_Bb, C_ptr + b * s_Cb, st_c,
                                           offs_d, d_mask, dim, t, t_mask, dstate, s_Bn, s_Bl,
                                           s_Cn, s_Cl, n + 1, BD)
            else:
                An, Bn, Cn, s = _bwd_rows(A_ptr, B_ptr + b * s_Bb, C_ptr + b * s_Cb, st_c,
                                          offs_d, d_mask, dim, t, t_mask, dstate, s_Bn, s_Bl,
                                          s_Cn, s_Cl, n, BD)
            A2 = An * 1.4426950408889634
            # states of the chunk
            a = tl.exp2(dl * A2[:, None])
            bx = dlu * Bn
            _, x = tl.associative_scan((a, tl.where(cols == 0, bx + a * s[:, None], bx)), axis=1,
                                       combine_fn=combine)
            # adjoint h_t = dy_t C_n,t + a_{t+1} h_{t+1}: a forward scan over the reversed
            # tiles, its carry (the adjoint at the next chunk's first step) enters at column 0
            anr = tl.exp2(dlnr * A2[:, None])
            g = _flip(dy * Cn, offs_t, BD, T)
            g = tl.where(cols == 0, g + anr * column(Hc, cols, n)[:, None], g)
            _, hr = tl.associative_scan((anr, g), axis=1, combine_fn=combine)
            # the previous state's adjoint at the chunk's first step, one state late (as the
            # forward's exit states): Hc does not change within the chunk
            Hn = tl.where(cols == n - 1, column(hp, cols, T - 1)[:, None], Hn)
            hp = hr
            h = _flip(hr, offs_t, BD, T)  # back to time order
            hB += h * Bn
            qq = h * (x - bx)  # h_t a_t x_{t-1}
            qA += qq * An[:, None]
            dAc = tl.where(cols == n, dAc + tl.sum(qq * dl, axis=1)[:, None], dAc)
            # dB_n, dC_n: (T,) rows, summed over the channels. Written as (BD, T) tiles (the
            # row broadcast over the channels, masked to the block's first channel unless
            # ATOMIC_BC == 2) so that they keep the tiles' layout: a 1-D store or atomic gets
            # a layout of its own and a conversion through shared memory.
            bc_ptr = tl.broadcast_to(((b * dstate + n) * L + t)[None, :], (BD, T))
            if ATOMIC_BC == 2:  # one (vector) atomic per channel, no reduction in the program
                tl.atomic_add(dB_ptr + bc_ptr, h * dlu, mask=m2, sem="relaxed")
                tl.atomic_add(dC_ptr + bc_ptr, x * dy, mask=m2, sem="relaxed")
            else:
                m_bc = (tl.arange(0, BD) == 0)[:, None] & t_mask[None, :]
                dBn, dCn = tl.reduce((h * dlu, x * dy), axis=0, combine_fn=_add2,
                                     keep_dims=True)  # one pass through shared memory
                dBn = tl.broadcast_to(dBn, (BD, T))
                dCn = tl.broadcast_to(dCn, (BD, T))
                if ATOMIC_BC == 1:
                    tl.atomic_add(dB_ptr + bc_ptr, dBn, mask=m_bc, sem="relaxed")
                    tl.atomic_add(dC_ptr + bc_ptr, dCn, mask=m_bc, sem="relaxed")
                else:
                    tl.store(dB_ptr + bc_ptr, dBn.to(dB_ptr.dtype.element_ty), mask=m_bc)
                    tl.store(dC_ptr + bc_ptr, dCn.to(dC_ptr.dtype.element_ty), mask=m_bc)
        Hc = tl.where(cols == dstate - 1, column(hp, cols, T - 1)[:, None], Hn)
        du = dl * hB + Dv[:, None] * dy
        tl.store(du_ptr + o_off, du.to(du_ptr.dtype.element_ty), mask=m2)
        # u and delta again (cache hits) rather than kept live through the state loop
        u = tl.load(u_ptr + b * s_ub + offs_d[:, None] * s_ud + t[None, :] * s_ul, mask=m2,
                    other=0.0).to(tl.float32)
        ddl = qA + u * hB
        if SOFTPLUS:
            dl, raw = load_delta(dt_ptr + b * s_db, offs_d[:, None] * s_dd + t[None, :] * s_dl,
                                 m2, bias, HAS_BIAS, SOFTPLUS)
            ddl = ddl * dsoftplus(raw)
        ddl = tl.where(m2, ddl, 0.0)
        tl.store(ddt_ptr + o_off, ddl.to(ddt_ptr.dtype.element_ty), mask=m2)
        db_acc += tl.sum(ddl, axis=1)
    # acc = [dA (dim, dstate) | dD (dim) | ddelta_bias (dim)], fp32, reduced over batch and parts
    tl.atomic_add(acc_ptr + offs_d[:, None] * dstate + offs_t[None, :], dAc, mask=dn_mask,
                  sem="relaxed")
    if HAS_D:
        tl.atomic_add(acc_ptr + dim * dstate + offs_d, dD_acc, mask=d_mask, sem="relaxed")
    if HAS_BIAS:
        tl.atomic_add(acc_ptr + dim * dstate + dim + offs_d, db_acc, mask=d_mask, sem="relaxed")

