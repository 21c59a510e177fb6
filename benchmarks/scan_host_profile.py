"""Host-side cost of the Triton scan (not a test): the time the host needs to issue each part
of a forward+backward, with the direct launches of mambaseg.ops.triton.fast_launch on and off,
next to plain PyTorch baselines; then a cProfile of 100 forward+backward calls.

    python benchmarks/scan_host_profile.py                 # repository root, CUDA machine
    python benchmarks/scan_host_profile.py --shape 8x16x4096 --configs "default;BC=1"

Every number is the median over 50 calls of the host time of one call, the GPU idle at its
start (microseconds).
"""
import argparse
import cProfile
import pstats
import sys

import torch

sys.path.insert(0, "src")
sys.path.insert(0, "benchmarks")
from scan import NullScan, make_inputs  # noqa: E402
from scan_profile import host_time, parse_configs  # noqa: E402

from mambaseg.ops import selective_scan  # noqa: E402
from mambaseg.ops.triton import fast_launch as triton_launch  # noqa: E402
from mambaseg.ops.triton.launch import selective_scan_triton  # noqa: E402


def calls(shape, config):
    x = make_inputs(shape, 16, torch.float32, torch.device("cuda"), True)
    gy = torch.randn(shape, device="cuda")
    args = (x["u"], x["delta"], x["A"], x["B"], x["C"])
    kw = dict(D=x["D"], z=x["z"], delta_bias=x["delta_bias"], delta_softplus=True)
    inputs = list(x.values())

    def fwd():
        return selective_scan_triton(*args, **kw, config=config)

    def fwd_nograd():
        with torch.no_grad():
            return fwd()

    def dispatch_nograd():
        with torch.no_grad():
            return selective_scan(*args, **kw, backend="triton")

    def fwd_bwd():
        return torch.autograd.grad(fwd(), inputs, gy)

    def torch_baseline():  # one elementwise op and its backward through the autograd engine
        return torch.autograd.grad(x["u"] * 1.5, [x["u"]], gy)

    def null_scan():  # a Python autograd.Function with the scan's inputs, launching nothing
        return torch.autograd.grad(NullScan.apply(*inputs), inputs, gy)

    return {"fwd, no grad": fwd_nograd, "fwd via selective_scan, no grad": dispatch_nograd,
            "fwd, grad enabled": fwd, "fwd+bwd": fwd_bwd,
            "torch baseline: u*1.5 fwd+bwd": torch_baseline,
            "floor: NullScan fwd+bwd": null_scan}


def us(fn):
    for _ in range(5):
        fn()
    return 1000 * host_time(fn, 50)


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="8x12x1024")
    p.add_argument("--configs", default="default")
    args = p.parse_args()
    shape = tuple(int(v) for v in args.shape.split("x"))
    print(f"host time to issue, us, {shape}, {torch.cuda.get_device_name()}")
    for spec, config in zip(args.configs.split(";"), parse_configs(args.configs)):
        fns = calls(shape, config)
        rows = {}
        for fast in ("1", "0"):
            triton_launch.set_fast_launch(fast == "1")
            for name, fn in fns.items():
                rows.setdefault(name, []).append(us(fn))
            with torch.autograd.set_multithreading_enabled(False):
                rows.setdefault("fwd+bwd, autograd on the calling thread", []).append(
                    us(fns["fwd+bwd"]))
        print(f"\nconfig {spec}: {'direct launch':>14} {'Triton launch':>14}")
        for name, (on, off) in rows.items():
            print(f"  {name:<42} {on:8.1f} {off:14.1f}")
    triton_launch.set_fast_launch(True)
    fn = calls(shape, None)["fwd+bwd"]
    for _ in range(5):
        fn()
    with torch.autograd.set_multithreading_enabled(False):
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(100):
            fn()
        prof.disable()
    torch.cuda.synchronize()
    pstats.Stats(prof).sort_stats("tottime").print_stats(20)


if __name__ == "__main__":
    main()
