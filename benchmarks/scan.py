"""Benchmark of the selective-scan backends (forward, forward+backward).

    python benchmarks/scan.py                       # current device (CUDA if available)
    python benchmarks/scan.py --device cpu --reps 5
    python benchmarks/scan.py --shapes 8x12x1024,8x16x4096 --backends torch,reference
    python benchmarks/scan.py --sweep               # also a few Triton launch configurations
    python benchmarks/scan.py --backends triton --configs "BC=1;T=64"
                                                    # Triton next to the given configurations

Inputs: N = 16 (--dstate), with z, D, delta_bias and softplus, Mamba-like statistics. Times are
medians over --reps runs after warm-up (CUDA events on GPU, time.perf_counter on CPU). On CPU the
speed-up over the float64 reference is printed where the reference was run (small shapes only).
On CUDA every backend is also timed replaying its forward+backward from a CUDA graph ("graph":
the GPU's own time, without the host's), and where mamba_ssm is importable the Triton rows end
with their graph-time ratio to mamba_ssm measured in the same run (see
benchmarks/mamba_ssm_build.py to build it on a machine without it). The eager ratio comes from a
second timing, interleaved call by call: triton, the --configs and mamba_ssm alternate (A B C,
C B A, ...), so that a drift of the host's speed, large on shared machines, hits all alike (the
table's eager columns time one backend after the other: at (8, 12, 1024) on an H200 they gave
a ratio of 1.18 in a run whose interleaved timing gave 0.88). On CUDA the output ends with the
host floor: the same timing of `NullScan`, a Python autograd.Function that takes the scan's
inputs and launches no kernel (any scan behind such a function, mamba_ssm's included, takes at
least that long per call on that machine).
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

from mambaseg.ops import available_backends, selective_scan  # noqa: E402

SHAPES = [(32, 1024, 256), (8, 12, 1024), (8, 16, 4096), (128, 12, 1024), (8, 1024, 4096)]
# mamba_ssm CUDA kernel, fwd+bwd, fp32, N = 16, z, D, softplus, as measured in the issue (the
# targets; compared with the card that runs the benchmark)
MAMBA_SSM_MS = {
    "H100": {(32, 1024, 256): 1.105, (8, 12, 1024): 0.107, (8, 16, 4096): 0.147,
             (128, 12, 1024): 0.276, (8, 1024, 4096): 4.12},
    "H200": {(32, 1024, 256): 1.046, (8, 12, 1024): 0.135, (8, 16, 4096): 0.152,
             (128, 12, 1024): 0.295, (8, 1024, 4096): 3.96},
}


def mamba_ssm_targets(device_name):
    """The issue's mamba_ssm times for this card ({} for other cards)."""
    return next((t for card, t in MAMBA_SSM_MS.items() if card in device_name), {})
CPU_MAX_ELEMS = 1 << 21  # batch*dim*L above this is skipped on CPU unless --shapes names it
REF_MAX_ELEMS = {"cpu": 1 << 17, "cuda": 1 << 17}
SWEEP = [  # Triton configurations tried with --sweep (besides the default); compiled once each
    {"T": 64}, {"T": 32}, {"WARPS": 8}, {"MAXNREG": 0}, {"BC": 1},
]
SWEEP_SPLIT = [{"P": 1}, {"P": 8}, {"P": 64}]  # extra ones where the default splits along L


def make_inputs(shape, dstate, dtype, device, requires_grad):
    batch, dim, length = shape
    g = torch.Generator().manual_seed(0)
    dt = torch.exp(torch.rand(dim, generator=g) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
    t = {
        "u": torch.randn(batch, dim, length, generator=g),
        "delta": torch.randn(batch, dim, length, generator=g) * 0.5,
        "A": -torch.arange(1, dstate + 1.0).repeat(dim, 1),
        "B": torch.randn(batch, dstate, length, generator=g),
        "C": torch.randn(batch, dstate, length, generator=g),
        "D": torch.ones(dim),
        "z": torch.randn(batch, dim, length, generator=g),
        "delta_bias": dt + torch.log(-torch.expm1(-dt)),
    }
    out = {}
    for k, v in t.items():
        v = v.to(device=device, dtype=torch.float32 if k in ("A", "D", "delta_bias") else dtype)
        out[k] = v.requires_grad_(requires_grad)
    return out


class NullScan(torch.autograd.Function):
    """The host floor of any scan behind a Python autograd.Function (mamba_ssm's included): the
    scan's 8 inputs saved, one output and 8 gradients allocated, no kernel launched."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias):
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias)
        return torch.empty_like(u)

    @staticmethod
    def backward(ctx, dout):
        return tuple(torch.empty_like(t) for t in ctx.saved_tensors)


def host_floor(shape, args, device, run):
    """(fwd+bwd ms of NullScan, of ``u * 1.5``): what the timing loop costs without a scan."""
    x = make_inputs(shape, args.dstate, args.dtype, device, requires_grad=True)
    names = list(x)
    gy = torch.randn(shape, device=device, dtype=args.dtype)

    def null():
        torch.autograd.grad(NullScan.apply(*(x[k] for k in names)), [x[k] for k in names], gy)

    def mul():
        torch.autograd.grad(x["u"] * 1.5, [x["u"]], gy)

    return run(null, args.reps, 3), run(mul, args.reps, 3)


def timer(device):
    if device.type == "cuda":
        def run(fn, reps, warmup):
            for _ in range(warmup):
                fn()
            torch.cuda.synchronize()
            times = []
            for _ in range(reps):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end))
            return statistics.median(times)
    else:
        def run(fn, reps, warmup):
            for _ in range(warmup):
                fn()
            times = []
            for _ in range(reps):
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
            return statistics.median(times)
    return run


def graph_time(fn, reps):
    """Median ms of replaying ``fn`` captured in a CUDA graph: the GPU's time alone, without the
    host's (the way a graphed training step runs). Raises if ``fn`` cannot be captured."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return timer(torch.device("cuda"))(graph.replay, reps, 3)


def interleaved(shape, entries, args, device, reps):
    """Eager fwd+bwd of each entry ((label, backend, Triton config or None)), alternating call
    by call (A B C, C B A, ...) so that a drift of the host's speed, large on shared machines,
    hits them alike: {label: median ms}, and {label: share of the rounds it beat the last
    entry}."""
    calls = {lab: scan_calls(b, shape, args, device, cfg)[1] for lab, b, cfg in entries}
    labels = [e[0] for e in entries]
    run = timer(device)
    for fn in calls.values():  # warm-up
        run(fn, 1, 3)
    times = {lab: [] for lab in labels}
    for i in range(reps):
        for lab in (labels if i % 2 == 0 else labels[::-1]):
            times[lab].append(run(calls[lab], 1, 0))
    last = times[labels[-1]]
    wins = {lab: sum(a < b for a, b in zip(times[lab], last)) / reps for lab in labels[:-1]}
    return {lab: statistics.median(t) for lab, t in times.items()}, wins


def scan_calls(backend, shape, args, device, config=None):
    """``fwd()`` (no grad) and ``fwd_bwd()`` of one backend on Mamba-like inputs of ``shape``."""
    x = make_inputs(shape, args.dstate, args.dtype, device, requires_grad=True)
    names = list(x)

    def call():
        if backend == "triton" and config is not None:
            from mambaseg.ops.triton.launch import selective_scan_triton

            return selective_scan_triton(x["u"], x["delta"], x["A"], x["B"], x["C"], D=x["D"],
                                         z=x["z"], delta_bias=x["delta_bias"], delta_softplus=True,
                                         config=config)
        return selective_scan(x["u"], x["delta"], x["A"], x["B"], x["C"], D=x["D"], z=x["z"],
                              delta_bias=x["delta_bias"], delta_softplus=True, backend=backend)

    gy = torch.randn(shape, device=device, dtype=args.dtype)

    def fwd():
        with torch.no_grad():
            call()

    def fwd_bwd():
        y = call()
        torch.autograd.grad(y, [x[k] for k in names], gy)

    return fwd, fwd_bwd


def bench_one(backend, shape, args, device, run, config=None):
    fwd, fwd_bwd = scan_calls(backend, shape, args, device, config)
    reps = args.reps
    warmup = 2 if device.type == "cuda" else 1
    if backend == "reference":
        reps, warmup = max(1, min(reps, 3)), 1
    t_fb = run(fwd_bwd, 1, warmup)  # warm-up (compilation) and a first estimate
    if t_fb > 50:  # slow case: fewer repetitions
        reps = max(1, min(reps, 5 if device.type == "cuda" else 3))
    times = (run(fwd, reps, 1), run(fwd_bwd, reps, 0))
    if device.type == "cuda" and backend != "reference":
        try:
            times += (graph_time(fwd_bwd, reps),)
        except Exception as exc:  # noqa: BLE001 - not capturable: report, keep the eager times
            print(f"  {backend} {shape}: CUDA graph failed: {type(exc).__name__}: {exc}"[:300])
    return times


def parse_shapes(spec):
    return [tuple(int(v) for v in s.lower().split("x")) for s in spec.split(",") if s]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--reps", type=int, default=None, help="timed runs (default 20 CUDA, 5 CPU)")
    p.add_argument("--shapes", default=None, help="e.g. 8x12x1024,8x16x4096 (batch x dim x L)")
    p.add_argument("--backends", default=None, help="comma list; default: all available")
    p.add_argument("--dstate", type=int, default=16)
    p.add_argument("--sweep", action="store_true", help="also time a few Triton configurations")
    p.add_argument("--configs", default=None,
                   help="Triton launch configurations timed after the Triton default, "
                        "';'-separated, keys as MAMBASEG_TRITON_CONFIG "
                        "(e.g. 'BC=1;T=64')")
    p.add_argument("--no-reference", action="store_true")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    args = p.parse_args(argv)
    t_start = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    args.dtype = getattr(torch, args.dtype)
    args.reps = args.reps or (20 if device.type == "cuda" else 5)
    specs = [x.strip() for x in (args.configs or "").split(";") if x.strip()]  # --configs
    explicit = args.shapes is not None
    shapes = parse_shapes(args.shapes) if explicit else SHAPES
    avail = available_backends(device)
    backends = args.backends.split(",") if args.backends else [b for b in avail if b != "reference"]
    for b in backends:
        if b not in avail:
            p.error(f"backend {b!r} not available on {device}; available: {', '.join(avail)}")
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        import platform
        name = f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    print(f"device: {name}")
    print(f"torch {torch.__version__}", end="")
    try:
        import triton
        print(f", triton {triton.__version__}", end="")
    except ImportError:
        pass
    print(f"; dtype {str(args.dtype).replace('torch.', '')}, N={args.dstate}, z, D, delta_bias, "
          f"softplus; median of {args.reps} runs (ms)")
    run = timer(device)
    header = f"{'shape (B,D,L)':18s} {'backend':30s} {'fwd ms':>9s} {'fwd+bwd ms':>11s}"
    if device.type == "cuda":
        header += f" {'graph':>7s}"
    targets = mamba_ssm_targets(name) if device.type == "cuda" else {}
    card = next((c for c in MAMBA_SSM_MS if c in name), "this card (none measured)")
    header += "  speed-up vs reference (fwd / fwd+bwd)" if device.type == "cpu" else \
        f"  mamba_ssm {card} fwd+bwd (ratio)"
    print(header)
    print("-" * len(header))
    for shape in shapes:
        elems = shape[0] * shape[1] * shape[2]
        if device.type == "cpu" and not explicit and elems > CPU_MAX_ELEMS:
            print(f"{str(shape):18s} skipped on CPU (too slow; name it in --shapes to force)")
            continue
        ref = None
        want_ref = not args.no_reference and (
            "reference" in backends or elems <= REF_MAX_ELEMS.get(device.type, 0))
        rows = []
        if want_ref:
            ref = bench_one("reference", shape, args, device, run)
            rows.append(("reference (float64)", ref))
        for b in backends:
            if b == "reference":
                continue
            try:
                rows.append((b, bench_one(b, shape, args, device, run)))
            except Exception as exc:  # report a failing backend, keep going
                print(f"{str(shape):18s} {b}: failed: {type(exc).__name__}: {str(exc)[:500]}")
                continue
            if b == "triton" and specs:
                from mambaseg.ops.triton.config import make_config
                from mambaseg.ops.triton.config import parse_env_config as _parse_env_config

                for spec in specs:
                    label = f"triton {spec}"
                    try:
                        cfg = _parse_env_config(spec)
                        c = make_config(shape[0], shape[1], shape[2], args.dstate, device, cfg)
                        label += f" (P={c['P']})"
                        rows.append((label, bench_one(b, shape, args, device, run, config=cfg)))
                    except Exception as exc:  # report a failing configuration, keep going
                        print(f"  {label}: failed: {type(exc).__name__}: {str(exc)[:500]}")
            if b == "triton" and args.sweep:
                from mambaseg.ops.triton.config import make_config

                cfg0 = make_config(shape[0], shape[1], shape[2], args.dstate, device)
                extra = SWEEP + (SWEEP_SPLIT if cfg0["P"] > 1 else [])
                for cfg in extra:
                    c = make_config(shape[0], shape[1], shape[2], args.dstate, device, cfg)
                    label = "triton " + ",".join(f"{k}={v}" for k, v in cfg.items()) + f" (P={c['P']})"
                    try:
                        rows.append((label, bench_one(b, shape, args, device, run, config=cfg)))
                    except Exception as exc:  # report a failing configuration, keep going
                        print(f"  {label}: failed: {type(exc).__name__}: {exc}")
        here = dict(rows).get("mamba_ssm")  # mamba_ssm measured in this run, if importable
        for label, (tf, tfb, *tg) in rows:
            line = f"{str(shape):18s} {label:30s} {tf:9.3f} {tfb:11.3f}"
            if device.type == "cuda":
                line += f" {tg[0]:7.3f}" if tg else f" {'-':>7s}"
            if device.type == "cpu" and ref is not None and label != "reference (float64)":
                line += f"  {ref[0] / tf:7.1f}x / {ref[1] / tfb:7.1f}x"
            elif shape in targets and label != "reference (float64)":
                target = targets[shape]
                line += f"  {target:.3f} ({tfb / target:.2f}, {'ok' if tfb <= target else 'slower'})"
            if here is not None and label.startswith("triton") and tg and len(here) > 2:
                # (the eager ratio: from the interleaved timing below; these eager columns
                # time one backend after the other, and the host's speed drifts in between)
                line += f"; vs mamba_ssm in this run: graph {tg[0] / here[2]:.2f}"
            print(line, flush=True)
        if device.type == "cuda" and "triton" in backends:
            from mambaseg.ops.triton.config import make_config

            c = make_config(shape[0], shape[1], shape[2], args.dstate, device)
            print(f"{'':18s} triton default config: " + ", ".join(f"{k}={v}" for k, v in c.items()))
    if device.type == "cuda" and {"triton", "mamba_ssm"} <= set(backends):
        from mambaseg.ops.triton.config import parse_env_config as _parse_env_config

        entries = [("triton", "triton", None)] + [
            (f"triton {spec}", "triton", _parse_env_config(spec)) for spec in specs] + [
            ("mamba_ssm", "mamba_ssm", None)]
        print(f"\ntriton and mamba_ssm in this run, interleaved call by call (eager fwd+bwd, "
              f"median of {2 * args.reps} each, ms; ratio to mamba_ssm, and how often the row "
              f"beat it):")
        for shape in shapes:
            med, wins = interleaved(shape, entries, args, device, 2 * args.reps)
            ms = med["mamba_ssm"]
            for lab, _, _ in entries[:-1]:
                print(f"  {str(shape):18s} {lab:24s} {med[lab]:7.3f}  mamba_ssm {ms:7.3f}  "
                      f"ratio {med[lab] / ms:.2f}  (faster in {100 * wins[lab]:.0f}% of the "
                      f"rounds)", flush=True)
    if device.type == "cuda":
        null, mul = host_floor(shapes[0], args, device, run)
        print(f"host floor, same timing at {shapes[0]}: a Python autograd.Function with the scan's "
              f"8 inputs that launches no kernel (benchmarks/scan.py NullScan) {null:.3f} ms "
              f"fwd+bwd; one multiply u * 1.5 {mul:.3f} ms fwd+bwd")
    print(f"benchmark time {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
