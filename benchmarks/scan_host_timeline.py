"""Where the host's time goes in one eager forward+backward of the selective scan (not a test).

    python benchmarks/scan_host_timeline.py                  # repository root, CUDA machine
    python benchmarks/scan_host_timeline.py --shapes 8x12x1024,128x12x1024

For each backend (triton; mamba_ssm when importable; NullScan, the floor of any Python
autograd.Function with the scan's inputs) it stamps the time at the entry and exit of the
autograd Function's forward and backward and prints the medians of the six intervals of one
``torch.autograd.grad(scan(...), inputs, dy)`` (GPU idle at its start), with the autograd
engine's default worker thread and on the calling thread. Then the host cost of the single
operations the Triton path is made of (an allocation, a zero fill, one launch through
mambaseg.ops.triton.fast_launch, the compiled launcher's C function alone). Microseconds.
"""
import argparse
import statistics
import sys
import time

import torch

sys.path.insert(0, "src")
sys.path.insert(0, "benchmarks")
from scan import NullScan, make_inputs, parse_shapes  # noqa: E402

from mambaseg.ops.triton import launch as st  # noqa: E402
from mambaseg.ops.selective_scan import _mamba_ssm_fn  # noqa: E402

STAMPS = {}
COLUMNS = ("call->fwd", "fwd body", "fwd->ret", "grad->bwd", "bwd body", "bwd->ret", "total")


def _timed(fn, start, end):
    """``fn`` (a forward or backward) recording its entry and exit times as ``start``/``end``."""
    def wrapper(ctx, *args):
        STAMPS[start] = time.perf_counter()
        out = fn(ctx, *args)
        STAMPS[end] = time.perf_counter()
        return out
    return staticmethod(wrapper)


def stamped(fn_cls):
    """A subclass of the autograd Function ``fn_cls`` whose forward/backward record times."""
    class Stamped(fn_cls):
        forward = _timed(fn_cls.forward, "f0", "f1")
        backward = _timed(fn_cls.backward, "b0", "b1")

    return Stamped


def backends(x):
    """name -> (Stamped Function, apply(Function) -> output)."""
    args = (x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"], x["delta_bias"])
    dev = x["u"].get_device()
    out = {"triton": (stamped(st._TritonScan), lambda F: F.apply(*args, True, None, dev))}
    if _mamba_ssm_fn() is not None:
        from mamba_ssm.ops import selective_scan_interface as msi

        out["mamba_ssm"] = (stamped(msi.SelectiveScanFn), lambda F: F.apply(*args, True, False))
    out["NullScan"] = (stamped(NullScan), lambda F: F.apply(*args))
    return out


def timeline(shape, reps):
    x = make_inputs(shape, 16, torch.float32, torch.device("cuda"), True)
    inputs = list(x.values())
    dy = torch.randn(shape, device="cuda")
    print(f"\n{shape}: median us over {reps} calls of one fwd+bwd, GPU idle at the start")
    print(f"  {'backend':<10} {'engine':<8}" + "".join(f"{c:>10}" for c in COLUMNS))
    for name, (F, apply) in backends(x).items():
        for engine in ("worker", "caller"):
            rows = []
            with torch.autograd.set_multithreading_enabled(engine == "worker"):
                for i in range(reps + 10):
                    torch.cuda.synchronize()
                    t0 = time.perf_counter()
                    y = apply(F)
                    t1 = time.perf_counter()
                    torch.autograd.grad(y, inputs, dy)
                    t2 = time.perf_counter()
                    s = STAMPS
                    if i >= 10:
                        rows.append((s["f0"] - t0, s["f1"] - s["f0"], t1 - s["f1"], s["b0"] - t1,
                                     s["b1"] - s["b0"], t2 - s["b1"], t2 - t0))
            med = [1e6 * statistics.median(c) for c in zip(*rows)]
            print(f"  {name:<10} {engine:<8}" + "".join(f"{m:10.1f}" for m in med))
    torch.cuda.synchronize()


def per_op(fn, n=100, reps=20):
    """Median host us of one ``fn()`` (loops of ``n``)."""
    for _ in range(n):
        fn()
    times = []
    for _ in range(reps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        times.append((time.perf_counter() - t0) / n)
    torch.cuda.synchronize()
    return 1e6 * statistics.median(times)


def single_ops(shape):
    x = make_inputs(shape, 16, torch.float32, torch.device("cuda"), True)
    with torch.no_grad():
        st.selective_scan_triton(x["u"], x["delta"], x["A"], x["B"], x["C"], D=x["D"],
                                 z=x["z"], delta_bias=x["delta_bias"], delta_softplus=True)
    plan = st._plan(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"],
                    x["delta_bias"], True, None, False, x["u"].get_device())
    ins = (x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"], x["delta_bias"])
    out = torch.empty(shape, device="cuda")
    ws = torch.empty(max(plan.ws.size, 64), device="cuda")  # (room for the view row below)
    # (no backward: the accumulator argument is a placeholder, as in the plan's forward)
    ptrs = [t.data_ptr() for t in ins] + [out.data_ptr() if s is None else ws.data_ptr() + 4 * s
                                           for s in plan.fwd_slots] + [out.data_ptr()]
    tensors = lambda: list(ins) + [out if s is None else ws[s:]  # noqa: E731
                                   for s in plan.fwd_slots] + [out]
    plan.fwd(ptrs, tensors)
    rows = {
        f"torch.empty{tuple(shape)}": lambda: torch.empty(shape, device="cuda"),
        "torch.zeros(1024)": lambda: torch.zeros(1024, device="cuda"),
        "tensor slice + view": lambda: ws[16:32].view(4, 4),
        "torch.empty((3,) + shape).unbind(0)": lambda: torch.empty((3,) + tuple(shape),
                                                                    device="cuda").unbind(0),
        "split_with_sizes into 4": lambda: ws.split_with_sizes([16, 16, 16, ws.numel() - 48]),
        "t.data_ptr() x 8": lambda: [t.data_ptr() for t in ins],
        "forward kernel, fast_launch.Launcher": lambda: plan.fwd(ptrs, tensors),
    }
    entry = next((e for e in plan.fwd._entries.values() if e), None)
    if entry is not None:
        run, function, packed, tail = entry
        grid, ints, dev = plan.fwd.grid, plan.fwd.ints, plan.fwd.device_index
        stream = torch.cuda.current_stream().cuda_stream
        rows["forward kernel, compiled.run (Triton's launcher)"] = lambda: run(
            grid[0], grid[1], 1, stream, function, packed, None, None, None, *ptrs, *ints, *tail)
        launch = getattr(run, "launch", None)
        if launch is not None and getattr(run, "global_scratch_size", 1) == 0:
            coop, pdl = run.launch_cooperative_grid, run.launch_pdl
            rows["forward kernel, its C launch function alone"] = lambda: launch(
                grid[0], grid[1], 1, stream, function, coop, pdl, None, None, packed, None, None,
                None, *ptrs, *ints, *tail)
        rows["torch._C._cuda_getCurrentRawStream"] = lambda: \
            torch._C._cuda_getCurrentRawStream(dev)
    print(f"\nsingle operations at {shape}, host us each (median of 20 loops of 100)")
    for name, fn in rows.items():
        print(f"  {name:<52} {per_op(fn):8.2f}")


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="8x12x1024,8x16x4096,128x12x1024")
    p.add_argument("--reps", type=int, default=100)
    args = p.parse_args()
    print(f"host timeline, {torch.cuda.get_device_name()}, torch {torch.__version__}")
    print("columns: entry of the Function's forward, its body, back to the caller; "
          "torch.autograd.grad to the backward's entry, its body, back to the caller; total")
    for shape in parse_shapes(args.shapes):
        timeline(shape, args.reps)
    single_ops(parse_shapes(args.shapes)[0])


if __name__ == "__main__":
    main()
