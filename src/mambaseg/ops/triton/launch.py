"""The Triton scan's host side: per-problem plans (`_Plan`: grids, int arguments,
constexprs, workspace layout, built once per problem signature), the launches and the autograd
Function (`selective_scan_triton`). See docs/scan.md, "Launches".
"""
from __future__ import annotations

import os

import torch

from mambaseg.ops._common import no_autocast
from mambaseg.ops.scan_torch import selective_scan_torch
from mambaseg.ops.triton.config import ENV_VAR, cdiv, make_config
from mambaseg.ops.triton.fast_launch import Launcher
from mambaseg.ops.triton.scan_bwd import scan_bwd_carry_kernel, scan_bwd_kernel
from mambaseg.ops.triton.scan_fwd import scan_fwd_fix_kernel, scan_fwd_kernel

_F32 = torch.float32


def _bc_mode(cfg, n_dblk):
    """The backward's ATOMIC_BC (scan_bwd_kernel) from config BC and the channel blocks."""
    return 2 if cfg.get("BC", 2) == 2 else (1 if n_dblk > 1 else 0)


def _fwd_options(cfg):
    """The forward kernel's register cap (config FMAXNREG)."""
    return {"maxnreg": cfg["FMAXNREG"]} if cfg.get("FMAXNREG") else {}


def _bwd_options(cfg):
    """The backward kernel's PREFETCH (config PF), LOOKBACK (LB) and register cap (MAXNREG)."""
    out = {"PREFETCH": cfg["PF"], "LOOKBACK": cfg["LB"]}
    if cfg.get("MAXNREG"):
        out["maxnreg"] = cfg["MAXNREG"]
    return out


class _Workspace:
    """Offsets (elements) of named fp32 buffers in one allocation; each starts on 64 bytes
    unless added with ``align=False`` (right after the previous one)."""

    def __init__(self):
        self.end, self.offset, self.numel = 0, {}, {}

    @property
    def size(self):
        return cdiv(self.end, 16) * 16

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

    The forward allocates the output, one fp32 workspace (saved chunk states, the pre-gate
    output for dz, a split forward's summaries) and, when a backward follows, the backward's
    fp32 accumulator, which the forward kernel zeroes (docs/scan.md, "Buffers"). A slot list
    names a kernel's buffer arguments by workspace offset; ``None`` stands for the call's
    output (the fix kernel's real output; elsewhere a placeholder that flags keep untouched).
    """

    def __init__(self, cfg, shape, dstate, device, strides, has_d, has_z, has_bias, softplus,
                 save):
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
        n_dblk_bwd = cdiv(dim, cfg["BD_BWD"])
        self.atomic_bc = atomic_bc = _bc_mode(cfg, n_dblk_bwd)
        acc = self.acc = _Workspace()
        acc.add("dA", dim * dstate)
        acc.add("dD", dim, align=False)  # dA, dD, dbias: one run (the kernels' layout)
        acc.add("dbias", dim, align=False)
        if self.split and cfg.get("LB"):  # the split backward's ticket and flags
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
        n_dblk = cdiv(dim, cfg["BD"])
        grid = (batch * n_dblk, PF)
        zero_per = cdiv(cdiv(zero_n, grid[0] * grid[1]), 512) * 512 if save else 0
        u_s, dt_s, z_s, B_s, C_s = strides
        ints = (dim, length, dstate, n_dblk, cfg["n_chunks_fwd"], cfg["cpp_fwd"], PF)
        flags = dict(HAS_D=has_d, HAS_Z=has_z, HAS_BIAS=has_bias, SOFTPLUS=softplus, SAVE=save)
        meta = dict(BD=cfg["BD"], NP=NP, T=cfg["T_FWD"], **flags, num_warps=cfg["WARPS"])
        self.fwd = Launcher(scan_fwd_kernel, grid, ints + (cfg["n_chunks"], zero_n if save else 0, zero_per)
                            + u_s + dt_s + z_s + B_s + C_s,
                            dict(meta, SPLIT=fsplit, TS=cfg["T"], **_fwd_options(cfg)),
                            self.dev_index)
        self.fix = Launcher(scan_fwd_fix_kernel, grid, ints + u_s + dt_s + z_s + C_s, meta,
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
        cfg = plan.cfg
        batch, dim, length = plan.shape
        dstate, NP, P = plan.dstate, cfg["NP"], cfg["P"]
        n_dblk = cdiv(dim, cfg["BD_BWD"])
        u_s, dt_s, z_s, B_s, C_s = plan.strides
        ints = (dim, length, dstate, n_dblk, cfg["n_chunks"], cfg["cpp"], P)
        flags = dict(HAS_Z=plan.has_z, HAS_BIAS=plan.has_bias, SOFTPLUS=plan.softplus)
        meta = dict(BD=cfg["BD_BWD"], NP=NP, T=cfg["T"], **flags, num_warps=cfg["WARPS_BWD"])
        self.carry = Launcher(scan_bwd_carry_kernel, (batch * n_dblk, P - 1),
                              ints + dt_s + z_s + C_s + g_strides, meta,
                              plan.dev_index) if plan.split and not cfg.get("LB") else None
        self.bwd = Launcher(scan_bwd_kernel, (batch * n_dblk, P),
                            ints + u_s + dt_s + z_s + B_s + C_s + g_strides,
                            dict(meta, HAS_D=plan.has_d, SPLIT=plan.split,
                                 ATOMIC_BC=plan.atomic_bc, **_bwd_options(cfg)), plan.dev_index)

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
    env = os.environ.get(ENV_VAR, "")
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
                # (make_config's ``graphed``): compile its kernels now, while compiling is allowed
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
    TRITON_INTERPRET=1); arguments as `mambaseg.ops.selective_scan`. ``config``: {key: int}
    launch-configuration overrides, which win over MAMBASEG_TRITON_CONFIG (docs/scan.md)."""
    if u.numel() == 0:  # nothing to launch
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
