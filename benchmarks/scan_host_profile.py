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
from scan_profile import host_time, scan_calls  # noqa: E402

SHAPE = (8, 12, 1024)


def main():
    fwd, fwd_bwd = scan_calls(SHAPE)
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
