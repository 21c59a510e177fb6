"""Where the Triton scan's time goes on a GPU (not a test): eager forward+backward (CUDA events),
the host time to issue it, the same work replayed as a CUDA graph (GPU time only), and the
kernels' own times (torch.profiler), at the five benchmark shapes.

    python benchmarks/scan_profile.py     # run from the repository root on a CUDA machine
"""
import statistics
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, "src")
sys.path.insert(0, "benchmarks")
from scan import SHAPES, make_inputs, timer  # noqa: E402

from mambaseg.ops.scan_triton import make_config, selective_scan_triton  # noqa: E402


def event_time(fn, reps=30):
    """Median milliseconds between CUDA events around ``fn`` (after 3 warm-up calls)."""
    return timer(torch.device("cuda"))(fn, reps, 3)


def host_time(fn, reps=30):
    """Median milliseconds the host spends issuing ``fn`` (the GPU idle at the start)."""
    times = []
    for _ in range(reps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    torch.cuda.synchronize()
    return statistics.median(times)


def scan_calls(shape):
    """``fwd()`` and ``fwd_bwd()`` of the Triton scan on Mamba-like inputs of ``shape``."""
    x = make_inputs(shape, 16, torch.float32, torch.device("cuda"), True)
    gy = torch.randn(shape, device="cuda")

    def fwd():
        return selective_scan_triton(x["u"], x["delta"], x["A"], x["B"], x["C"], D=x["D"],
                                     z=x["z"], delta_bias=x["delta_bias"], delta_softplus=True)

    def fwd_bwd():
        return torch.autograd.grad(fwd(), list(x.values()), gy)

    return fwd, fwd_bwd


def profile_shape(shape):
    call, fwd_bwd = scan_calls(shape)

    def fwd():
        with torch.no_grad():
            call()

    print(shape, make_config(*shape, 16, torch.device("cuda")))
    print(f"  eager fwd {event_time(fwd):.3f}  fwd+bwd {event_time(fwd_bwd):.3f} ms | host issue "
          f"fwd {host_time(fwd):.3f} fwd+bwd {host_time(fwd_bwd):.3f} ms")
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                fwd_bwd()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fwd_bwd()
        print(f"  graph fwd+bwd {event_time(graph.replay):.3f} ms")
    except Exception as exc:  # noqa: BLE001 - report and go on
        print("  graph failed", type(exc).__name__, str(exc)[:200])
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(10):
            fwd_bwd()
        torch.cuda.synchronize()
    totals = {}
    for ev in prof.events():
        if ev.device_type == torch.autograd.DeviceType.CUDA:
            t, n = totals.get(ev.name, (0.0, 0))
            totals[ev.name] = (t + ev.device_time, n + 1)
    for name, (t, n) in sorted(totals.items(), key=lambda kv: -kv[1][0])[:8]:
        print(f"    {t / 10 / 1000:8.4f} ms/iter  x{n / 10:.0f}  {name[:90]}")


if __name__ == "__main__":
    for s in SHAPES:
        profile_shape(s)
