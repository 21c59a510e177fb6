"""Host-side cost of one Triton forward+backward of the scan at (8, 12, 1024) (not a test):
the time to issue it, and a cProfile of 100 calls with autograd on the calling thread.

    python benchmarks/scan_host_profile.py     # repository root, CUDA machine
"""
import cProfile
import pstats
import sys

import torch

sys.path.insert(0, "src")
sys.path.insert(0, "benchmarks")
from scan import make_inputs  # noqa: E402
from scan_profile import host_time  # noqa: E402

from mambaseg.ops.scan_triton import selective_scan_triton  # noqa: E402

SHAPE = (8, 12, 1024)


def main():
    x = make_inputs(SHAPE, 16, torch.float32, torch.device("cuda"), True)
    gy = torch.randn(SHAPE, device="cuda")
    names = list(x)

    def fwd():
        return selective_scan_triton(x["u"], x["delta"], x["A"], x["B"], x["C"], D=x["D"],
                                     z=x["z"], delta_bias=x["delta_bias"], delta_softplus=True)

    def fwd_bwd():
        return torch.autograd.grad(fwd(), [x[k] for k in names], gy)

    for _ in range(5):
        fwd_bwd()
    print(f"host fwd(grad-enabled) {host_time(fwd, 50):.3f} ms, fwd+bwd {host_time(fwd_bwd, 50):.3f} ms")
    with torch.autograd.set_multithreading_enabled(False):
        print(f"single-thread autograd: fwd+bwd {host_time(fwd_bwd, 50):.3f} ms")
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(100):
            fwd_bwd()
        prof.disable()
        torch.cuda.synchronize()
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
