"""Selective scan in plain PyTorch: a parallel (odd-even / Blelloch-style) scan, CPU and anywhere.

No Python loop over time steps. The recurrence ``x_t = a_t x_{t-1} + b_t`` with
``a_t = exp(delta_t A) in (0, 1]`` is solved by recursive pairing: pairs (2m, 2m+1) are folded
into one step ``(a_{2m+1} a_{2m}, a_{2m+1} b_{2m} + b_{2m+1})``, the half-length problem is solved
recursively, and the even positions are filled in from their left neighbour: log2(L) levels of
whole-tensor multiply-adds (about 3 element operations per state element in all, a geometric
series), each vectorised over batch, channels and states. All intermediates are written with
``out=`` into preallocated buffers (on CPU a fresh output for strided inputs is a slow path).

Numerics: only products of decays in (0, 1] are formed (the segment sums of log-decays, taken as
products), never ``exp`` of a positive number and never a division by a cumulative product, so it
is stable for any length (tested at L = 16k): decays that underflow to 0 are exactly right.

Memory and backward (custom autograd.Function): the state tensor (L, batch, dim, dstate) is
processed in segments along L of bounded size (``_SEGMENT_ELEMS``), the state carried across
segment boundaries. Small problems keep the decays and states for the backward; larger ones
keep only the inputs and the state at each segment start and recompute segment by segment in
reverse order. The adjoint ``h_t = dy_t C_t + a_{t+1} h_{t+1}`` is the same scan run backwards.

State and accumulation are float32 (float64 when an input is float64); the result has u's dtype.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from mambaseg.ops._common import compute_dtype, no_autocast

# Elements (L_seg * batch * dim * dstate) of one state-sized buffer per segment.
# On CPU, 2^19 keeps a segment's buffers (2 MB in fp32) in cache: 25 % faster than 2^22 at L=1024.
_SEGMENT_ELEMS = {"cpu": 1 << 19, "cuda": 1 << 25}
# Up to this many state elements (L * batch * dim * dstate, one segment), the forward keeps the
# decays and states for the backward (2 such buffers) instead of the backward recomputing them.
_SAVE_ELEMS = {"cpu": 1 << 22, "cuda": 1 << 23}


def _segment_len(length, per_step, device_type):
    budget = _SEGMENT_ELEMS.get(device_type, 1 << 24)
    return max(1, min(length, budget // max(per_step, 1)))


def scan_fwd(a, b, out, ws_a=None, ws_b=None):
    """out[t] = a[t] * out[t-1] + b[t] along dim 0 (out[-1] = 0); 2-D (L, K), any row stride.

    ``out`` must not overlap a or b. ``ws_a``/``ws_b``: optional (L or more, K) workspaces
    (every intermediate is written with ``out=``: strided inputs into a fresh tensor take a slow
    path in TensorIterator on CPU). Returns ``out``.
    """
    length = a.shape[0]
    if ws_a is None:
        ws_a = a.new_empty(length, a.shape[1])
        ws_b = torch.empty_like(ws_a)
    if length == 1:
        out.copy_(b)
        return out
    if length % 2:
        scan_fwd(a[:-1], b[:-1], out[:-1], ws_a, ws_b)
        torch.addcmul(b[-1], a[-1], out[-2], out=out[-1])
        return out
    m = length // 2
    a2, b2, o2 = a.view(m, 2, -1), b.view(m, 2, -1), out.view(m, 2, -1)
    a_pair = torch.mul(a2[:, 1], a2[:, 0], out=ws_a[:m])
    b_pair = torch.addcmul(b2[:, 1], a2[:, 1], b2[:, 0], out=ws_b[:m])
    scan_fwd(a_pair, b_pair, o2[:, 1], ws_a[m:], ws_b[m:])  # states at odd positions
    o2[0, 0].copy_(b2[0, 0])
    if m > 1:  # even positions from the odd state on their left
        torch.addcmul(b2[1:, 0], a2[1:, 0], o2[:-1, 1], out=o2[1:, 0])
    return out


def scan_rev(c, g, out, ws_a=None, ws_b=None):
    """out[t] = c[t] * out[t+1] + g[t] along dim 0 (out[L] = 0); the mirror image of scan_fwd."""
    length = c.shape[0]
    if ws_a is None:
        ws_a = c.new_empty(length, c.shape[1])
        ws_b = torch.empty_like(ws_a)
    if length == 1:
        out.copy_(g)
        return out
    if length % 2:
        scan_rev(c[1:], g[1:], out[1:], ws_a, ws_b)
        torch.addcmul(g[0], c[0], out[1], out=out[0])
        return out
    m = length // 2
    c2, g2, o2 = c.view(m, 2, -1), g.view(m, 2, -1), out.view(m, 2, -1)
    c_pair = torch.mul(c2[:, 0], c2[:, 1], out=ws_a[:m])
    g_pair = torch.addcmul(g2[:, 0], c2[:, 0], g2[:, 1], out=ws_b[:m])
    scan_rev(c_pair, g_pair, o2[:, 0], ws_a[m:], ws_b[m:])  # adjoints at even positions
    o2[-1, 1].copy_(g2[-1, 1])
    if m > 1:
        torch.addcmul(g2[:-1, 1], c2[:-1, 1], o2[1:, 0], out=o2[:-1, 1])
    return out


class _ScanCore(torch.autograd.Function):
    """y = selective scan of (u, delta, A, B, C), delta already biased/softplus-ed.

    Inputs are (B,D,L) / (D,N) / (B,N,L) tensors of one float dtype; y is (B,D,L).
    Internally everything is time-major: (L, batch, dim[, dstate]).
    """

    @staticmethod
    def forward(ctx, u, delta, A, Bm, Cm):
        batch, dim, length = u.shape
        dstate = A.shape[1]
        dl = delta.permute(2, 0, 1).contiguous()  # (L,B,D)
        dlu = (delta * u).permute(2, 0, 1).contiguous()  # (L,B,D)
        bt = Bm.permute(2, 0, 1).contiguous()  # (L,B,N)
        ct = Cm.permute(2, 0, 1).contiguous()  # (L,B,N)
        k = batch * dim * dstate
        dev = u.device.type
        seg = _segment_len(length, k, dev)
        # small problems keep the decays and states for the backward instead of recomputing them
        keep = (seg == length and any(ctx.needs_input_grad)
                and length * k <= _SAVE_ELEMS.get(dev, 1 << 22))
        y = u.new_empty(length, batch, dim)
        starts = list(range(0, length, seg))
        carries = []  # state entering each segment (None for the first)
        carry = None
        buf_a = buf_b = buf_x = None
        for s0 in starts:
            s1 = min(s0 + seg, length)
            n = s1 - s0
            if buf_a is None or buf_a.shape[0] < n + 1:
                buf_a = u.new_empty(n + 1, batch, dim, dstate)  # one spare row (backward's a_{L})
                buf_b = u.new_empty(n, batch, dim, dstate)
                buf_x = torch.empty_like(buf_b)
            a, bx, x = buf_a[:n], buf_b[:n], buf_x[:n]
            torch.mul(dl[s0:s1, :, :, None], A, out=a)
            a.exp_()
            torch.mul(dlu[s0:s1, :, :, None], bt[s0:s1, :, None, :], out=bx)
            carries.append(carry)
            if carry is not None:
                bx[0].addcmul_(a[0], carry)
            scan_fwd(a.view(n, k), bx.view(n, k), x.view(n, k))
            if s1 < length:
                carry = x[-1].clone()
            torch.sum(torch.mul(x, ct[s0:s1, :, None, :], out=bx), dim=-1, out=y[s0:s1])
        ctx.seg = seg
        ctx.carries = carries
        if keep:
            buf_a[length].zero_()
            ctx.save_for_backward(u, delta, A, dl, dlu, bt, ct, buf_a, buf_x)
        else:
            ctx.save_for_backward(u, delta, A, dl, dlu, bt, ct, None, None)
        return y.permute(1, 2, 0)

    @staticmethod
    def backward(ctx, gy):
        u, delta, A, dl, dlu, bt, ct, kept_a, kept_x = ctx.saved_tensors
        seg, carries = ctx.seg, ctx.carries
        batch, dim, length = u.shape
        dstate = A.shape[1]
        k = batch * dim * dstate
        gyt = gy.permute(2, 0, 1).to(u.dtype).contiguous()  # (L,B,D)
        d_dl = u.new_empty(length, batch, dim)  # grad of delta (time-major)
        d_dlu = u.new_empty(length, batch, dim)  # grad of delta*u
        d_bt = u.new_empty(length, batch, dstate)
        d_ct = u.new_empty(length, batch, dstate)
        dA = torch.zeros_like(A)
        h_next = None  # adjoint at the first step of the following segment
        starts = list(range(0, length, seg))
        buf = None
        for i in reversed(range(len(starts))):
            s0 = starts[i]
            s1 = min(s0 + seg, length)
            n = s1 - s0
            if buf is None or buf[0].shape[0] < n + 1:
                buf = [u.new_empty(n + 1, batch, dim, dstate)] + \
                      [u.new_empty(n, batch, dim, dstate) for _ in range(4)]
            bx, g, h = (t[:n] for t in buf[1:4])
            torch.mul(dlu[s0:s1, :, :, None], bt[s0:s1, :, None, :], out=bx)
            if kept_a is not None:  # single segment, saved by the forward (read only here)
                a_ext, x = kept_a, kept_x
                a = a_ext[:n]
            else:
                a_ext, x = buf[0][:n + 1], buf[4][:n]
                # decays a_t for t in [s0, s1], a_{s1} only if the sequence goes on
                if s1 < length:
                    torch.mul(dl[s0:s1 + 1, :, :, None], A, out=a_ext)
                    a_ext.exp_()
                else:
                    torch.mul(dl[s0:s1, :, :, None], A, out=a_ext[:n])
                    a_ext[:n].exp_()
                    a_ext[n].zero_()
                a = a_ext[:n]
                # recompute the states of this segment
                if carries[i] is not None:
                    x0 = bx[0].clone()
                    bx[0].addcmul_(a[0], carries[i])
                    scan_fwd(a.view(n, k), bx.view(n, k), x.view(n, k))
                    bx[0].copy_(x0)
                else:
                    scan_fwd(a.view(n, k), bx.view(n, k), x.view(n, k))
            # adjoint: h_t = gy_t C_t + a_{t+1} h_{t+1}
            torch.mul(gyt[s0:s1, :, :, None], ct[s0:s1, :, None, :], out=g)
            if h_next is not None:
                g[-1].addcmul_(a_ext[n], h_next)
            scan_rev(a_ext[1:].view(n, k), g.view(n, k), h.view(n, k))
            h_next = h[0].clone() if i > 0 else None
            # dC_t = sum_d gy x ; dB_t = sum_d h delta u ; d(delta u)_t = sum_n h B
            torch.sum(torch.mul(x, gyt[s0:s1, :, :, None], out=g), dim=2, out=d_ct[s0:s1])
            torch.sum(torch.mul(h, dlu[s0:s1, :, :, None], out=g), dim=2, out=d_bt[s0:s1])
            torch.sum(torch.mul(h, bt[s0:s1, :, None, :], out=g), dim=-1, out=d_dlu[s0:s1])
            # q = h * a_t x_{t-1} = h * (x - bx): d/d(delta) through A, d/dA through delta
            q = torch.sub(x, bx, out=bx).mul_(h)
            torch.sum(torch.mul(q, A, out=g), dim=-1, out=d_dl[s0:s1])
            dA += q.mul_(dl[s0:s1, :, :, None]).sum((0, 1))
        d_dl = d_dl.permute(1, 2, 0)
        d_dlu = d_dlu.permute(1, 2, 0)
        du = d_dlu * delta
        ddelta = d_dl + d_dlu * u
        return du, ddelta, dA, d_bt.permute(1, 2, 0), d_ct.permute(1, 2, 0)


def _softplus(x):
    """softplus; on CPU as log(1 + exp(x)) (x <= 20), 4x faster there than F.softplus, whose
    log1p is not vectorised; for x < -15 it returns 0 where softplus is below 3e-7."""
    if x.device.type != "cpu":
        return F.softplus(x)
    return torch.where(x > 20, x, torch.exp(x.clamp(max=20)).add(1).log())


# ------------------------------------------------------------------------- export formulation
# The autograd.Function above writes into preallocated buffers and unrolls its recursion for one
# length: a traced graph of it (torch.onnx.export, torch.jit.trace) would bake that length in and
# lose the data flow through the ``out=`` writes. ``scan_export`` computes the same recurrence
# functionally, for any batch and length taken from the tensors' (traced) shapes:
# EXPORT_FOLDS levels of pair folding (as ``scan_fwd``, the length first padded to a multiple of
# 2^EXPORT_FOLDS with identity steps a=1, b=0 at the end, which leave the states before them
# unchanged), a Hillis-Steele scan with EXPORT_LEVELS doubling steps over the M = L / 2^FOLDS
# folded steps (steps whose shift reaches past M change nothing; shifts are gathers, O(M) each),
# then the folds undone. Only products of decays in (0, 1] are formed, as above. Exact for
# L <= EXPORT_MAX_LEN = 2^(EXPORT_FOLDS + EXPORT_LEVELS) (1M tokens: the 1/8-resolution Mamba
# layers of an UltraLight VM-UNet see 1/64 of the pixels, so images up to 8192 x 8192); longer
# sequences raise in eager use, and ``inference.export`` records the largest image a graph takes.

#: pair-folding levels of the export scan (chunks of 2^EXPORT_FOLDS steps)
EXPORT_FOLDS = 5
#: doubling steps of the Hillis-Steele scan over the folded sequence
EXPORT_LEVELS = 15
#: the longest sequence the export scan is exact for
EXPORT_MAX_LEN = 1 << (EXPORT_FOLDS + EXPORT_LEVELS)


def scan_export(a, b):
    """x[t] = a[t] * x[t-1] + b[t] along the first axis (x[-1] = 0), functional and
    trace-friendly (see the comment above); a, b of one shape (L, ...)."""
    length = b.shape[0]
    if not torch.jit.is_tracing() and length > EXPORT_MAX_LEN:
        raise ValueError(f"scan_export: sequence length {length} exceeds {EXPORT_MAX_LEN}")
    chunk = 1 << EXPORT_FOLDS
    pad = [0, 0] * (a.dim() - 1) + [0, (chunk - length % chunk) % chunk]
    x = _scan_chunked(F.pad(a, pad, value=1.0), F.pad(b, pad, value=0.0), EXPORT_FOLDS)
    return x[:length]


def _scan_chunked(a, b, folds):
    """``scan_export`` of a length that is a multiple of 2^folds (time-major: the exported
    Gather / Concat nodes move contiguous blocks)."""
    rest = a.shape[1:]
    kept = []
    for _ in range(folds):                            # fold pairs (2m, 2m+1) into one step
        a2, b2 = a.reshape(-1, 2, *rest), b.reshape(-1, 2, *rest)
        ae, ao, be, bo = a2[:, 0], a2[:, 1], b2[:, 0], b2[:, 1]
        kept.append((ae, be))
        a, b = ao * ae, ao * be + bo
    pos = torch.ones_like(b.reshape(b.shape[0], -1)[:, 0]).cumsum(0) - 1  # 0 .. M-1
    one, zero = a.new_ones(()), a.new_zeros(())
    for level in range(EXPORT_LEVELS):                # inclusive scan over the M folded steps
        shift = 1 << level
        valid = pos >= shift
        index = torch.where(valid, pos - shift, torch.zeros_like(pos)).long()
        valid = valid.reshape(-1, *([1] * len(rest)))
        a_prev = torch.where(valid, a.index_select(0, index), one)
        b_prev = torch.where(valid, b.index_select(0, index), zero)
        b = b + a * b_prev
        a = a * a_prev
    x = b                                             # states at the last step of each chunk
    for ae, be in reversed(kept):                     # unfold: even steps from their left state
        left = torch.cat([torch.zeros_like(x[:1]), x[:-1]], dim=0)
        x = torch.stack([ae * left + be, x], dim=1).reshape(-1, *rest)
    return x


def selective_scan_export(u, delta, A, B, C):
    """y = selective scan of (u, delta, A, B, C) by the export scan (delta already biased and
    softplus-ed); (B,D,L) / (D,N) / (B,N,L) tensors of one float dtype -> y (B,D,L).

    The first fold and the last unfold are done here, from and to the (L, B, D) and (L, B, N)
    tensors, so that no (L, B, D, N) tensor is ever formed (onnxruntime runs op by op: every
    state-sized tensor is a pass over memory): decays and drives are formed per pair of steps,
    and y is read off the states of each pair.
    """
    length = u.shape[-1]
    if not torch.jit.is_tracing() and length > EXPORT_MAX_LEN:
        raise ValueError(f"selective_scan_export: sequence length {length} exceeds "
                         f"{EXPORT_MAX_LEN}")
    chunk = 1 << EXPORT_FOLDS
    pad = [0, 0, 0, 0, 0, (chunk - length % chunk) % chunk]   # delta 0: decay 1, drive 0
    dl = F.pad(delta.permute(2, 0, 1), pad)                   # (Lp, B, D)
    dlu = F.pad((delta * u).permute(2, 0, 1), pad)
    bt, ct = F.pad(B.permute(2, 0, 1), pad), F.pad(C.permute(2, 0, 1), pad)   # (Lp, B, N)

    def pairs(t):
        t2 = t.reshape(-1, 2, *t.shape[1:])
        return t2[:, 0], t2[:, 1]

    (dl_e, dl_o), (dlu_e, dlu_o), (b_e, b_o), (c_e, c_o) = map(pairs, (dl, dlu, bt, ct))
    a_e, a_o = torch.exp(dl_e[..., None] * A), torch.exp(dl_o[..., None] * A)   # (Lp/2,B,D,N)
    d_e = dlu_e[..., None] * b_e[:, :, None, :]
    d_o = dlu_o[..., None] * b_o[:, :, None, :]
    x_o = _scan_chunked(a_o * a_e, a_o * d_e + d_o, EXPORT_FOLDS - 1)   # states at odd steps
    left = torch.cat([torch.zeros_like(x_o[:1]), x_o[:-1]], dim=0)
    x_e = a_e * left + d_e
    y_e = torch.matmul(x_e, c_e[..., None])[..., 0]                 # sum over N: (Lp/2,B,D)
    y_o = torch.matmul(x_o, c_o[..., None])[..., 0]
    y = torch.stack([y_e, y_o], dim=1).reshape(-1, *y_e.shape[1:])[:length]   # (L, B, D)
    return y.permute(1, 2, 0)


def _exporting():
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


def selective_scan_torch(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                         functional=None):
    """The selective scan (mamba_ssm ``selective_scan_fn`` semantics) in plain PyTorch.

    ``functional``: use the trace-friendly ``selective_scan_export`` formulation (no autograd
    Function, any traced length); None (default): only while tracing or exporting to ONNX.
    """
    out_dtype = u.dtype
    f = compute_dtype(u, delta, A, B, C, D, z, delta_bias)
    if functional is None:
        functional = _exporting()
    with no_autocast(u.device.type):
        uf, df = u.to(f), delta.to(f)
        if delta_bias is not None:
            df = df + delta_bias.to(f)[:, None]
        if delta_softplus:
            df = _softplus(df)
        if functional:
            y = selective_scan_export(uf, df, A.to(f), B.to(f), C.to(f))
        else:
            y = _ScanCore.apply(uf, df, A.to(f), B.to(f), C.to(f))
        if D is not None:
            y = torch.addcmul(y, uf, D.to(f)[:, None])
        if z is not None:
            y = y * F.silu(z.to(f))
        return y.to(out_dtype)
