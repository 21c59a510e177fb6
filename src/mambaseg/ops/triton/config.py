"""Launch configuration of the Triton scan: block sizes, chunk lengths, parts along L, register
caps. Defaults per problem; ``config=`` or MAMBASEG_TRITON_CONFIG override them (the keys and
their defaults: docs/scan.md, "Launch configuration").
"""
from __future__ import annotations

import functools
import os

import torch

ENV_VAR = "MAMBASEG_TRITON_CONFIG"
KEYS = ("BD", "BD_BWD", "T", "P", "WARPS", "WARPS_BWD", "BC", "MAXNREG", "PF", "FMAXNREG",
        "T_FWD", "P_FWD", "LB")

_SM_COUNT = {}


def _sm_count(device):
    if device.type != "cuda":
        return 4  # interpreter: a few "SMs", so that small test shapes exercise the split path
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _SM_COUNT:
        _SM_COUNT[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
    return _SM_COUNT[idx]


def cdiv(a, b):  # triton.cdiv is a constexpr_function: slow in host code
    return -(-a // b)


def pow2(n):
    """The smallest power of two >= n (1 for n <= 1)."""
    return 1 << max(int(n) - 1, 0).bit_length()


def parse_env_config(spec):
    """``"T=32,P=4"`` -> {"T": 32, "P": 4}; ValueError naming an unknown key."""
    spec = spec.strip()
    if not spec:
        return {}
    out = {}
    for item in spec.split(","):
        key, _, val = item.partition("=")
        key = key.strip().upper()
        if key not in KEYS:
            raise ValueError(f"{ENV_VAR}: unknown key {key!r} in {spec!r}")
        out[key] = int(val)
    return out


def make_config(batch, dim, length, dstate, device, config=None, graphed=False):
    """The launch configuration (a new dict) of one problem: u (batch, dim, length), A (dim,
    dstate). ``config`` wins over MAMBASEG_TRITON_CONFIG; ``graphed``: the launches are being
    captured into a CUDA graph, where only the GPU's time counts."""
    env = os.environ.get(ENV_VAR, "")
    key = tuple(sorted(config.items())) if config else ()
    return dict(_make_config(batch, dim, length, dstate, device.type, device.index, key, env,
                             bool(graphed)))


@functools.lru_cache(maxsize=1024)
def _make_config(batch, dim, length, dstate, dev_type, dev_index, config, env, graphed=False):
    cfg = dict(parse_env_config(env))
    cfg.update(dict(config))
    device = torch.device(dev_type, dev_index) if dev_index is not None else torch.device(dev_type)
    NP = pow2(max(dstate, 1))
    warps = cfg.get("WARPS") or 4
    warps_bwd = cfg.get("WARPS_BWD") or warps
    # The tiles take the layout of their loads along time: with L % 16 == 0 these are
    # vectorised (runs of 4 fp32 steps per lane, T / 4 lanes per channel), otherwise one step
    # per lane (T lanes per channel). Defaults: the T that puts a channel on the 32 lanes of a
    # warp, and a channel block that covers the warps. T >= N: the carries are (BD, T) tiles
    # with one column per state.
    aligned = length % 16 == 0
    T = max(pow2(cfg.get("T") or (128 if aligned else 32)), NP)
    lanes_t = min(32, T // 4 if aligned else T)
    BD = pow2(cfg.get("BD") or warps * (32 // lanes_t))
    BD_BWD = pow2(cfg.get("BD_BWD") or warps_bwd * (32 // lanes_t))
    n_chunks = cdiv(length, T)
    if cfg.get("P"):
        P = max(1, min(int(cfg["P"]), n_chunks))
    else:  # split along L only where batch x channel blocks cannot fill ~4 programs per SM
        progs = batch * cdiv(dim, BD_BWD)
        target = 4 * _sm_count(device)
        P = 1 if 2 * progs >= target else min(n_chunks, cdiv(target, progs))
    cpp = cdiv(n_chunks, P)
    P = cdiv(n_chunks, cpp)
    # The forward's own chunk length and parts. Eager calls that the backward splits: one
    # forward launch instead of two (the host's time to issue a call exceeds the GPU's), with
    # one channel per program; a CUDA graph capture keeps the split forward (shorter on the GPU)
    T_FWD = max(pow2(cfg.get("T_FWD") or T), T)
    if P > 1 and aligned and not graphed and not any(k in cfg for k in ("T_FWD", "P_FWD", "BD")):
        T_FWD, BD = max(min(1024, pow2(length)), T), 1
    P_FWD = cfg.get("P_FWD") or (1 if T_FWD > T else P)
    if T_FWD > T and P_FWD > 1:
        raise ValueError(f"selective_scan_triton: T_FWD={T_FWD} > T={T} needs P_FWD=1, got "
                         f"P_FWD={P_FWD}")
    n_chunks_fwd = cdiv(length, T_FWD)
    cpp_fwd = cdiv(n_chunks_fwd, max(1, min(int(P_FWD), n_chunks_fwd)))
    P_FWD = cdiv(n_chunks_fwd, cpp_fwd)
    out = {"BD": BD, "BD_BWD": BD_BWD, "NP": NP, "T": T, "P": P, "cpp": cpp,
           "n_chunks": n_chunks, "WARPS": warps, "WARPS_BWD": warps_bwd, "T_FWD": T_FWD,
           "P_FWD": P_FWD, "cpp_fwd": cpp_fwd, "n_chunks_fwd": n_chunks_fwd,
           "BC": 1 if cfg.get("BC") == 1 else 2,
           "PF": 0 if cfg.get("PF") == 0 else 1}
    # The look-back's tickets count in fp32 (the accumulator's dtype): exact below 2**24 programs
    bwd_progs = batch * cdiv(dim, BD_BWD) * P
    out["LB"] = 0 if P == 1 or cfg.get("LB") == 0 or bwd_progs >= 1 << 24 else 1
    # Forward register cap: 64 (8 blocks per SM instead of 6, for a few bytes of spills) where
    # its programs do not all fit on the GPU at once
    fmx = cfg.get("FMAXNREG")
    if fmx is None:
        fwd_progs = batch * cdiv(dim, BD) * P_FWD
        fmx = 64 if aligned and BD * T_FWD <= 128 * warps and \
            fwd_progs > 6 * _sm_count(device) else 0
    if fmx:
        out["FMAXNREG"] = int(fmx)
    # Backward register cap: 128 (4 blocks of 4 warps per SM; no spills at 4 tile elements per
    # thread) unless set (MAXNREG=0: none) or the tiles are larger
    mx = cfg.get("MAXNREG")
    mx = (128 if aligned and BD_BWD * T <= 128 * warps_bwd else 0) if mx is None else int(mx)
    if mx:
        out["MAXNREG"] = mx
    return out
