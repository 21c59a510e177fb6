"""Where the Triton scan's time goes on a GPU (not a test): eager forward+backward (CUDA events),
the host time to issue it, the same work replayed as a CUDA graph (GPU time only), and the
kernels' own times (torch.profiler), at the five benchmark shapes.

    python benchmarks/scan_profile.py     # run from the repository root on a CUDA machine
    python benchmarks/scan_profile.py --configs "default;BC=1" --shapes 8x12x1024

Ends with one summary table (config x shape: eager fwd+bwd, host time, CUDA-graph replay, the
backward and forward kernels' times) next to mamba_ssm's H100/H200 times from the issue.
"""
import argparse
import statistics
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, "src")
sys.path.insert(0, "benchmarks")
from scan import (SHAPES, graph_time, make_inputs, mamba_ssm_targets,  # noqa: E402
                  parse_shapes, timer)

from mambaseg.ops.triton.config import make_config  # noqa: E402
from mambaseg.ops.triton.config import parse_env_config as _parse_env_config  # noqa: E402
from mambaseg.ops.triton.launch import selective_scan_triton  # noqa: E402


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


def parse_configs(spec):
    """"default;BC=1,T=64" -> [None, {"BC": 1, "T": 64}]."""
    items = (x.strip() for x in spec.split(";"))
    return [None if item == "default" else (_parse_env_config(item) or None) for item in items]


def scan_calls(shape, config=None):
    """``fwd()`` and ``fwd_bwd()`` of the Triton scan on Mamba-like inputs of ``shape``."""
    x = make_inputs(shape, 16, torch.float32, torch.device("cuda"), True)
    gy = torch.randn(shape, device="cuda")

    def fwd():
        return selective_scan_triton(x["u"], x["delta"], x["A"], x["B"], x["C"], D=x["D"],
                                     z=x["z"], delta_bias=x["delta_bias"], delta_softplus=True,
                                     config=config)

    def fwd_bwd():
        return torch.autograd.grad(fwd(), list(x.values()), gy)

    return fwd, fwd_bwd


def profile_shape(shape, config=None):
    """Print the details for one (shape, config); return the summary row's numbers."""
    call, fwd_bwd = scan_calls(shape, config)

    def fwd():
        with torch.no_grad():
            call()

    print(shape, config or "default", make_config(*shape, 16, torch.device("cuda"), config))
    row = {"eager": event_time(fwd_bwd), "host": host_time(fwd_bwd), "graph": float("nan")}
    print(f"  eager fwd {event_time(fwd):.3f}  fwd+bwd {row['eager']:.3f} ms | host issue "
          f"fwd {host_time(fwd):.3f} fwd+bwd {row['host']:.3f} ms")
    try:
        row["graph"] = graph_time(fwd_bwd, 30)
        print(f"  graph fwd+bwd {row['graph']:.3f} ms")
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
    per_iter = {name: t / 10 / 1000 for name, (t, _) in totals.items()}
    row["bwd_k"] = sum(t for name, t in per_iter.items() if "_bwd_kernel" in name)
    row["fwd_k"] = sum(t for name, t in per_iter.items() if "_fwd_kernel" in name)
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default="default",
                   help='";"-separated launch configurations, e.g. "default;BC=1,T=64"')
    p.add_argument("--shapes", default=None, help="e.g. 8x12x1024,8x16x4096 (default: the five)")
    args = p.parse_args(argv)
    shapes = parse_shapes(args.shapes) if args.shapes else SHAPES
    targets = mamba_ssm_targets(torch.cuda.get_device_name())
    rows = []
    for spec, config in zip(args.configs.split(";"), parse_configs(args.configs)):
        for shape in shapes:
            try:
                rows.append((spec.strip() or "default", shape, profile_shape(shape, config)))
            except Exception as exc:  # noqa: BLE001 - one failing config must not end the run
                print("  FAILED", spec, shape, type(exc).__name__, str(exc)[:300])
    print(f"\nsummary, ms ({torch.cuda.get_device_name()}; mamba_ssm column: the issue's times "
          "on this card)")
    print(f"{'config':<24} {'(B, D, L)':<17} {'eager':>7} {'host':>7} {'graph':>7} {'bwd k':>7} "
          f"{'fwd k':>7} {'mamba_ssm':>9} {'ratio':>6}")
    for spec, shape, r in rows:
        ref = targets.get(shape, float("nan"))
        print(f"{spec:<24} {str(shape):<17} {r['eager']:7.3f} {r['host']:7.3f} {r['graph']:7.3f} "
              f"{r['bwd_k']:7.3f} {r['fwd_k']:7.3f} {ref:9.3f} {r['eager'] / ref:6.2f}")


if __name__ == "__main__":
    main()
