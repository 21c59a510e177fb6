"""Selective scan in Triton, "lean" kernel layout (the default; launch-config key ``KERNEL=2``).

Same semantics, dtypes and autograd wrapper as the tile-layout kernels of
:mod:`mambaseg.ops.scan_triton` (``KERNEL=1``), which dispatches here unless ``KERNEL=1``; only
the work layout of the kernels and the layout of the saved chunk states differ.

Layout of the work
------------------
The tile kernels hold (T, BD, N) tiles of states: every lane owns one (channel, state) pair
and keeps the T steps of its chunk in registers, so at N = 16 the backward keeps a dozen such
tiles live per lane (about 230 registers per thread on sm_90). Here, as in mamba_ssm's CUDA
kernels, time is spread over the lanes and the states are walked one at a time:

* tiles are (BD, T): BD channels x T time steps, time the fast (contiguous) axis. When
  L % 16 == 0 the loads along time are vectorised and the tiles take their layout: 4 consecutive
  steps per thread (fp32), T / 4 lanes along time, warps along channels. Defaults (make_config):
  T = 128 and BD = WARPS = 4, i.e. one channel per warp, its 128 steps over the 32 lanes. When
  L % 16 != 0 the loads cannot be vectorised; the default is then T = 32 (one step per lane,
  still warps along channels). T is at least N (see the carries below);
* per chunk the kernel loads the (BD, T) tiles of delta/u/z/dout once, then loops over the N
  states with a *run-time* loop (``range(0, dstate)``: a ``tl.static_range`` loop let the
  compiler interleave the unrolled states and raised the register count to 255 with spills).
  For state n it loads A[:, n] (BD,), the rows B[n], C[n] (loaded as (BD, T) broadcast tiles so
  that they get the tiles' layout; a 1-D load gets its own layout and a conversion through shared
  memory) and the chunk-entry state (BD,), builds ``a = exp(delta A_n)``, ``b = delta u B_n``
  and solves the chunk with ``tl.associative_scan`` along time (the combine of the default
  kernels; in-thread steps, then warp shuffles). Only (BD, T) tiles of one state are live;
  the per-state results are reduced at once: y += C_n x in the forward; in the backward du and
  ddelta accumulate over n in (BD, T) tiles, dA[:, n] is summed over time, dB_n / dC_n are added
  atomically (config BC=2, the default: per channel, vectorised relaxed atomics; BC=1: summed
  over the channel block first, which costs a pass through shared memory per state);
* the backward needs the states x (a forward scan) and the adjoint h_t = dy_t C_t + a_{t+1}
  h_{t+1} (a suffix scan). Triton's ``reverse=True`` scan, and tl.flip, cost many shuffles when
  time is over the lanes (92 and 20 per (4, 128) tile on sm_90, against 12 for the forward
  scan), so the adjoint is a forward scan over time-reversed tiles, made in registers with
  ``tl.gather`` along the lanes (4 shuffles per tile): per chunk, delta at t + 1 reversed
  (``_shift_flip``: the chunk's own delta, its first column from the chunk after it); per state,
  dy C_n reversed and h brought back to time order. Every tile is *loaded* in time order: a
  load through reversed pointers takes a layout of its own (with Triton 3.6: time across the
  warps), and the adjoint's scan and everything it touches then ran in that layout, through
  shared memory and barriers (ncu on an H200, (8, 1024, 4096): 37 shared-memory loads, 16
  stores and 10 barriers per state; the backward kernel 3.72 -> 2.21 ms without them, the
  prefetch below included). Triton 3.8 happened to keep one layout either way: look at the
  TTGIR of the Triton that runs, not of another;
* the backward loads state n + 1's A, B, C rows and saved state while it solves state n
  (config PF=1, the default): their latency no longer starts every state's dependency chain
  (backward kernel 2.67 -> 2.21 ms at (8, 1024, 4096) on an H200);
* the carries across chunks (forward state, backward adjoint) and the dA accumulator are (BD, T)
  tiles whose column n holds the value for state n (hence T >= N): taken out with a masked sum
  along time and put back with ``tl.where``, both in the tiles' layout. A carry enters the chunk
  scan through its first input (b_0 += a_0 s; for the adjoint g_0 += a_{t+1} h_{t+1} in reversed
  order). The carries entering a chunk are read from one tile and those leaving it written to
  another, each taken out of its scan one state late: no dependency runs from one state to the
  next through the carry tile, and the reduction of state n - 1 overlaps the scan of state n
  (forward kernel 1.62 -> 1.21 ms at (8, 1024, 4096) on an H100). Carries through memory instead
  (a store by the lane that holds the value, a barrier, a broadcast load) measured slower;
* the forward saves the state entering every chunk as (B, n_chunks, NP, D) fp32 (contiguous over
  channels), with this variant's chunk length; the backward recomputes the chunk's states from it.

ptxas (sm_90, Triton 3.6, default configuration, fp32, N = 16): forward 78 registers (64 with
a few bytes of spills under the FMAXNREG cap that make_config sets when the forward's programs
outnumber what fits on the GPU: 8 blocks per SM instead of 6, forward 1.21 -> 1.02 ms at
(8, 1024, 4096) on an H200), backward 128 (the default MAXNREG cap, no spills) against 85 and 231
for the tile kernels. Config keys: BD, BD_BWD, T, P, WARPS, WARPS_BWD as for the tile kernels,
BC (above), PF (above), MAXNREG / FMAXNREG (register caps of the main backward / forward
kernel; 0: none); REV has no effect here.

Parallelism along L (P > 1 parts, small batch x channels) follows the tile kernels: forward
pass 1 scans every part from a zero state and writes partial y, the part's final states and its
sum of delta; the fix pass gives every part its incoming state, completes y, corrects the saved
chunk states and applies D and the gate. In the backward every part needs the summaries of
the parts after it (its local adjoint at its first step from a zero carry, its sum of delta). By
default (config LB=1) the backward is one launch with a look-back between the parts: a program
takes a ticket when it starts (an atomic counter; ticket order gives the parts, the last one
first), computes and stores its part's summary, raises its flag (a barrier, then one release
atomic), then waits for the flags of the later parts (acquire loads) and reads their summaries
from L2. It waits only for programs that started before it: no deadlock whatever the GPU runs at
once. Ticket and flags lie in the accumulator the forward zeroes. On an H200 (interleaved eager
timing) this took 0.87 against 0.93 of mamba_ssm's time at (8, 16, 4096); a CUDA graph of it is
1 to 6 us slower than the two launches of LB=0 (a carry kernel, then the backward), since the
waiting programs share the SMs.
"""
from __future__ import annotations

import triton
import triton.language as tl

from mambaseg.ops.scan_triton import (KernelSet, _combine, _dsoftplus, _finish_output,
                                      _load_delta, _program_block, _zero_strip)

# Unlike the tile kernels, L and the batch/channel strides keep Triton's divisibility-by-16
# specialisation: when L % 16 == 0 the (BD, T) loads along time are vectorised, and their
# coalesced layout (4 fp32 steps per thread, lanes along time, warps along channels) is the one
# the scans want; other L compile a second variant (one step per thread: make_config then picks
# T = 32 so that the warps still lie along channels).
_NO_SPEC_LEAN = ["dim", "dstate", "n_dblk", "n_chunks", "cpp", "P", "ncs", "zero_n", "zero_per"]


@triton.jit
def _flip(x, offs_t, BD: tl.constexpr, T: tl.constexpr):
    """x[:, T - 1 - j]: time order reversed within the chunk. A tl.gather along the lanes
    (about 4 shuffles per element per thread on sm_90, tl.flip takes 5)."""
    return tl.gather(x, tl.broadcast_to((T - 1 - offs_t)[None, :], (BD, T)), axis=1)


@triton.jit
def _add2(a1, b1, a2, b2):
    return a1 + a2, b1 + b2


@triton.jit
def _col(tile, cols, n):
    """Column n of a (BD, T) tile, as (BD,). ``cols``: (1, T) column indices."""
    return tl.sum(tl.where(cols == n, tile, 0.0), axis=1)


@triton.jit
def _row(ptr, BD: tl.constexpr, mask):
    """A (T,) row (``ptr``: (T,) pointers) broadcast to a (BD, T) tile, fp32. Loaded as a 2-D
    tile so that it gets the layout of the data tiles (a 1-D load gets a layout of its own and a
    conversion through shared memory)."""
    T: tl.constexpr = ptr.shape[0]
    return tl.load(tl.broadcast_to(ptr[None, :], (BD, T)), mask=mask[None, :],
                   other=0.0).to(tl.float32)


@triton.jit
def _bwd_rows(A_ptr, B_ptr, C_ptr, st_ptr, offs_d, d_mask, dim, t, t_mask, dstate, s_Bn, s_Bl,
              s_Cn, s_Cl, n, BD: tl.constexpr):
    """State n's A[:, n], rows B[n] and C[n] and its saved chunk-entry state (``st_ptr``: the
    chunk's (NP, dim) block); zeros when n == dstate."""
    ok = n < dstate
    An = tl.load(A_ptr + offs_d * dstate + n, mask=d_mask & ok, other=0.0).to(tl.float32)
    Bn = _row(B_ptr + n * s_Bn + t * s_Bl, BD, t_mask & ok)
    Cn = _row(C_ptr + n * s_Cn + t * s_Cl, BD, t_mask & ok)
    s = tl.load(st_ptr + n * dim + offs_d, mask=d_mask & ok, other=0.0)
    return An, Bn, Cn, s


@triton.jit
def _next_delta(dt_ptr, offs_d, d_mask, t0, offs_t, L, s_dd, s_dl, bias, HAS_BIAS: tl.constexpr,
                SOFTPLUS: tl.constexpr):
    """delta' at step t0 (0 at or past L) as (BD,), loaded as the first column of a (BD, T)
    tile so that it takes the tiles' layout."""
    t = t0 + offs_t
    m = d_mask[:, None] & (t < L)[None, :]
    dl, raw = _load_delta(dt_ptr, offs_d[:, None] * s_dd + t[None, :] * s_dl, m, bias, HAS_BIAS,
                          SOFTPLUS, 0)
    return _col(dl, offs_t[None, :], 0)


@triton.jit
def _chunk_steps(c, offs_t, L, d_mask, T: tl.constexpr):
    """Chunk c's steps ``t``, their mask and the (BD, T) mask of the block's channels."""
    t = c * T + offs_t
    t_mask = t < L
    return t, t_mask, d_mask[:, None] & t_mask[None, :]


@triton.jit
def _bwd_chunk(dt_ptr, offs_d, d_mask, c, offs_t, L, s_dd, s_dl, bias, dl_next,
               HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, BD: tl.constexpr, T: tl.constexpr):
    """What both backward kernels start a chunk with: its steps ``t``, their mask, the (BD, T)
    mask, delta' and delta + bias in time order, and delta' at t + 1 time-reversed
    (``_shift_flip``; ``dl_next``: delta' at the chunk's last step + 1)."""
    t, t_mask, m2 = _chunk_steps(c, offs_t, L, d_mask, T)
    dl, raw = _load_delta(dt_ptr, offs_d[:, None] * s_dd + t[None, :] * s_dl, m2, bias, HAS_BIAS,
                          SOFTPLUS, 0)
    return t, t_mask, m2, dl, raw, _shift_flip(dl, dl_next, offs_t, BD, T)


@triton.jit
def _shift_flip(dl, dl_next, offs_t, BD: tl.constexpr, T: tl.constexpr):
    """The time-reversed a_{t+1} operand: column j holds dl at in-chunk step T - j (j >= 1) and
    ``dl_next`` (the next chunk's first step) in column 0. One tl.gather along the lanes."""
    idx = tl.broadcast_to(((T - offs_t) % T)[None, :], (BD, T))
    return tl.where(offs_t[None, :] == 0, dl_next[:, None], tl.gather(dl, idx, axis=1))


@triton.jit(do_not_specialize=_NO_SPEC_LEAN)
def _lean_fwd_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr,
    out_ptr, ysave_ptr, st_ptr, pst_ptr, pds_ptr, acc_ptr,
    dim, L, dstate, n_dblk, n_chunks, cpp, P, ncs, zero_n, zero_per,
    s_ub, s_ud, s_ul, s_db, s_dd, s_dl, s_zb, s_zd, s_zl,
    s_Bb, s_Bn, s_Bl, s_Cb, s_Cn, s_Cl,
    BD: tl.constexpr, NP: tl.constexpr, T: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    SAVE: tl.constexpr, SPLIT: tl.constexpr, TS: tl.constexpr,
):
    # The states are saved for the backward's chunks of TS steps (ncs of them): R per chunk of
    # this kernel's T steps (R > 1 only without SPLIT)
    R: tl.constexpr = T // TS
    part = tl.program_id(1)
    if SAVE:
        _zero_strip(acc_ptr, zero_n, zero_per, 512)
    b, offs_d, d_mask, bias, Dv = _program_block(bias_ptr, D_ptr, dim, n_dblk, tl.program_id(0),
                                                 BD, HAS_BIAS, HAS_D)
    offs_t = tl.arange(0, T)
    cols = offs_t[None, :]  # (1, T) column indices
    Sc = tl.zeros((BD, T), tl.float32)  # column n: state n entering the chunk
    dsum = tl.zeros((BD,), tl.float32)
    row = b * dim + offs_d
    c0 = part * cpp
    c1 = tl.minimum(c0 + cpp, n_chunks)
    for c in range(c0, c1):
        t, t_mask, m2 = _chunk_steps(c, offs_t, L, d_mask, T)
        dl, raw = _load_delta(dt_ptr + b * s_db, offs_d[:, None] * s_dd + t[None, :] * s_dl, m2,
                              bias, HAS_BIAS, SOFTPLUS, 0)
        u = tl.load(u_ptr + b * s_ub + offs_d[:, None] * s_ud + t[None, :] * s_ul, mask=m2,
                    other=0.0).to(tl.float32)
        dlu = dl * u
        y = tl.zeros((BD, T), tl.float32)
        Sn = tl.zeros((BD, T), tl.float32)  # column n: state n leaving the chunk
        xp = tl.zeros((BD, T), tl.float32)  # the previous state's states
        for n in range(0, dstate):
            A2 = tl.load(A_ptr + offs_d * dstate + n, mask=d_mask, other=0.0).to(tl.float32)
            A2 = A2 * 1.4426950408889634  # exp(x A) = exp2(x A2)
            Bn = _row(B_ptr + b * s_Bb + n * s_Bn + t * s_Bl, BD, t_mask)
            Cn = _row(C_ptr + b * s_Cb + n * s_Cn + t * s_Cl, BD, t_mask)
            s = _col(Sc, cols, n)  # (Sc does not change within the chunk: no chain over n)
            if SAVE:
                tl.store(st_ptr + ((b * ncs + c * R) * NP + n) * dim + offs_d, s, mask=d_mask)
            a = tl.exp2(dl * A2[:, None])
            bx = dlu * Bn
            bx = tl.where(cols == 0, bx + a * s[:, None], bx)
            _, x = tl.associative_scan((a, bx), axis=1, combine_fn=_combine)
            if SAVE and R > 1:  # the states entering the backward's other chunks in this one
                k = (offs_t + 1) // TS
                sel = ((offs_t + 1) % TS == 0) & (k < R) & (c * R + k < ncs)
                tl.store(st_ptr + ((b * ncs + c * R + k[None, :]) * NP + n) * dim
                         + offs_d[:, None], x, mask=d_mask[:, None] & sel[None, :])
            y += x * Cn
            # the previous state's exit state (its last column): taken out one state late so
            # that the reduction overlaps this state's scan instead of ending the iteration
            Sn = tl.where(cols == n - 1, _col(xp, cols, T - 1)[:, None], Sn)
            xp = x
        Sc = tl.where(cols == dstate - 1, _col(xp, cols, T - 1)[:, None], Sn)
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


@triton.jit(do_not_specialize=_NO_SPEC_LEAN)
def _lean_fwd_fix_kernel(
    u_ptr, dt_ptr, A_ptr, C_ptr, D_ptr, z_ptr, bias_ptr,
    ybuf_ptr, out_ptr, st_ptr, pst_ptr, pds_ptr,
    dim, L, dstate, n_dblk, n_chunks, cpp, P,
    s_ub, s_ud, s_ul, s_db, s_dd, s_dl, s_zb, s_zd, s_zl, s_Cb, s_Cn, s_Cl,
    BD: tl.constexpr, NP: tl.constexpr, T: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    SAVE: tl.constexpr,
):
    part = tl.program_id(1)
    b, offs_d, d_mask, bias, Dv = _program_block(bias_ptr, D_ptr, dim, n_dblk, tl.program_id(0),
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
        t, t_mask, m2 = _chunk_steps(c, offs_t, L, d_mask, T)
        o_off = row[:, None] * L + t[None, :]
        y = tl.load(ybuf_ptr + o_off, mask=m2, other=0.0)
        if part > 0:
            dl, raw = _load_delta(dt_ptr + b * s_db, offs_d[:, None] * s_dd + t[None, :] * s_dl,
                                  m2, bias, HAS_BIAS, SOFTPLUS, 0)
            cs = tl.cumsum(dl, axis=1) + run[:, None]
            for n in range(0, dstate):
                A2 = tl.load(A_ptr + offs_d * dstate + n, mask=d_mask,
                             other=0.0).to(tl.float32) * 1.4426950408889634
                Cn = _row(C_ptr + b * s_Cb + n * s_Cn + t * s_Cl, BD,
                      t_mask)
                s = _col(Sc, cols, n)
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
        dl_next = _col(dl, cols, 0)
        dy = tl.load(g_ptr + offs_d[:, None] * s_gd + t[None, :] * s_gl, mask=m2,
                     other=0.0).to(tl.float32)
        if HAS_Z:
            zz = tl.load(z_ptr + offs_d[:, None] * s_zd + t[None, :] * s_zl, mask=m2,
                         other=0.0).to(tl.float32)
            dy = dy * zz * tl.sigmoid(zz)
        for n in range(0, dstate):
            A2 = tl.load(A_ptr + offs_d * dstate + n, mask=d_mask,
                         other=0.0).to(tl.float32) * 1.4426950408889634
            Cn = _row(C_ptr + n * s_Cn + t * s_Cl, BD, t_mask)
            an = tl.exp2(dlnr * A2[:, None])  # a_{t+1}, reversed
            g = _flip(dy * Cn, offs_t, BD, T)
            g = tl.where(cols == 0, g + an * _col(Hc, cols, n)[:, None], g)
            _, h = tl.associative_scan((an, g), axis=1, combine_fn=_combine)
            Hc = tl.where(cols == n, _col(h, cols, T - 1)[:, None], Hc)
        esum += tl.sum(dlnr, axis=1)  # delta at steps t + 1
    h_ptrs, h_mask, e_ptrs = _summary_ptrs(phl_ptr, pes_ptr, b * P + part, offs_d, d_mask, dim,
                                           NP, T)
    tl.store(h_ptrs, Hc, mask=h_mask)
    tl.store(e_ptrs, esum, mask=d_mask)


@triton.jit(do_not_specialize=_NO_SPEC_LEAN)
def _lean_bwd_carry_kernel(
    dt_ptr, A_ptr, C_ptr, z_ptr, bias_ptr, g_ptr, phl_ptr, pes_ptr,
    dim, L, dstate, n_dblk, n_chunks, cpp, P,
    s_db, s_dd, s_dl, s_zb, s_zd, s_zl, s_Cb, s_Cn, s_Cl, s_gb, s_gd, s_gl,
    BD: tl.constexpr, NP: tl.constexpr, T: tl.constexpr,
    HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
):
    """Split backward, pass 1 (config LB=0): every part's summary (`_store_part_summary`)."""
    part = tl.program_id(1) + 1  # part 0's summary is never needed
    b, offs_d, d_mask, bias, Dv = _program_block(bias_ptr, bias_ptr, dim, n_dblk,
                                                 tl.program_id(0), BD, HAS_BIAS, False)
    _store_part_summary(dt_ptr, A_ptr, C_ptr, z_ptr, g_ptr, phl_ptr, pes_ptr, b, offs_d, d_mask,
                        bias, part, dim, L, dstate, n_chunks, cpp, P, s_db, s_dd, s_dl, s_zb, s_zd,
                        s_zl, s_Cb, s_Cn, s_Cl, s_gb, s_gd, s_gl, BD, NP, T, HAS_Z, HAS_BIAS,
                        SOFTPLUS)


@triton.jit(do_not_specialize=_NO_SPEC_LEAN)
def _lean_bwd_kernel(
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
    # acc: [dA | dD | ddelta_bias | sync (LOOKBACK: a ticket counter, then one flag per program,
    # zeroed by the forward) ...]
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
    b, offs_d, d_mask, bias, Dv = _program_block(bias_ptr, D_ptr, dim, n_dblk, pid, BD,
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
        dl_next = _col(dl, cols, 0)
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
                                       combine_fn=_combine)
            # adjoint h_t = dy_t C_n,t + a_{t+1} h_{t+1}: a forward scan over the reversed
            # tiles, its carry (the adjoint at the next chunk's first step) enters at column 0
            anr = tl.exp2(dlnr * A2[:, None])
            g = _flip(dy * Cn, offs_t, BD, T)
            g = tl.where(cols == 0, g + anr * _col(Hc, cols, n)[:, None], g)
            _, hr = tl.associative_scan((anr, g), axis=1, combine_fn=_combine)
            # the previous state's adjoint at the chunk's first step, one state late (as the
            # forward's exit states): Hc does not change within the chunk
            Hn = tl.where(cols == n - 1, _col(hp, cols, T - 1)[:, None], Hn)
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
        Hc = tl.where(cols == dstate - 1, _col(hp, cols, T - 1)[:, None], Hn)
        du = dl * hB + Dv[:, None] * dy
        tl.store(du_ptr + o_off, du.to(du_ptr.dtype.element_ty), mask=m2)
        # u and delta again (cache hits) rather than kept live through the state loop
        u = tl.load(u_ptr + b * s_ub + offs_d[:, None] * s_ud + t[None, :] * s_ul, mask=m2,
                    other=0.0).to(tl.float32)
        ddl = qA + u * hB
        if SOFTPLUS:
            dl, raw = _load_delta(dt_ptr + b * s_db, offs_d[:, None] * s_dd + t[None, :] * s_dl,
                                  m2, bias, HAS_BIAS, SOFTPLUS, 0)
            ddl = ddl * _dsoftplus(raw)
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


# ----------------------------------------------------------------------------------------------
# launches (called by scan_triton._TritonScan when cfg["KERNEL"] == 2)


def _bwd_options(cfg):
    """The backward kernel's ptxas register cap (config key MAXNREG), PREFETCH (key PF) and
    LOOKBACK (key LB)."""
    out = {"PREFETCH": cfg["PF"], "LOOKBACK": cfg["LB"]}
    if cfg.get("MAXNREG"):
        out["maxnreg"] = cfg["MAXNREG"]
    return out


#: the lean kernels for scan_triton's launch code
LEAN_KERNELS = KernelSet(
    _lean_fwd_kernel, _lean_fwd_fix_kernel, _lean_bwd_carry_kernel, _lean_bwd_kernel,
    rev=False,
    # dB/dC: 2 = atomically added per channel (config key BC=2, the default); 1 = reduced over
    # the channel block then atomically added (BC=1); 0 = so and stored (BC=1, one block)
    bc_mode=lambda cfg, n_dblk: 2 if cfg.get("BC", 2) == 2 else (1 if n_dblk > 1 else 0),
    bwd_options=_bwd_options,
    fwd_options=lambda cfg: {"maxnreg": cfg["FMAXNREG"]} if cfg.get("FMAXNREG") else {})
