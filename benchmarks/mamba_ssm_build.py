"""Build mamba_ssm's CUDA selective scan from its source release, for a same-machine comparison
in benchmarks/scan.py and the CUDA tests (not a test; mambaseg never needs mamba_ssm).

mamba_ssm publishes no wheels on PyPI and its source build compiles its every kernel for every
GPU architecture. This builds the ``selective_scan_cuda`` extension alone (fp32, fp16, bf16;
the backward for real A only) for the current GPU with mamba_ssm's own compiler flags. It also
lays out mamba_ssm's Python package without its ``__init__`` (which imports the whole model
zoo), so that
``mamba_ssm.ops.selective_scan_interface.selective_scan_fn``, the function mambaseg's
``backend="mamba_ssm"`` calls, imports with only einops and triton besides.

    python benchmarks/mamba_ssm_build.py mamba_ssm-2.2.5.tar.gz --out /tmp/mamba_ssm_build
    PYTHONPATH=/tmp/mamba_ssm_build/pkg:/tmp/mamba_ssm_build/ext python benchmarks/scan.py

The source release: ``mamba_ssm-X.tar.gz`` from https://pypi.org/project/mamba-ssm/#files (or an
unpacked copy). Needs nvcc, ninja and PyTorch with CUDA; a few minutes on 16 cores.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tarfile
import time

# the instantiations that selective_scan.cpp dispatches to and this build leaves out (the
# backward with complex A)
_STUB_ITYPES = ("float", "at::Half", "at::BFloat16")
_SOURCES = ["selective_scan.cpp"] + [f"selective_scan_{k}_{t}.cu" for k, t in (
    ("fwd", "fp32"), ("fwd", "fp16"), ("fwd", "bf16"),
    ("bwd", "fp32_real"), ("bwd", "fp16_real"), ("bwd", "bf16_real"))]

# mamba_ssm's setup.py (2.2.x), CUDA branch
_NVCC_FLAGS = ["-O3", "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
               "-U__CUDA_NO_BFLOAT16_OPERATORS__", "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
               "-U__CUDA_NO_BFLOAT162_OPERATORS__", "-U__CUDA_NO_BFLOAT162_CONVERSIONS__",
               "--expt-relaxed-constexpr", "--expt-extended-lambda", "--use_fast_math",
               "-lineinfo", "--threads", "4"]


def unpack(sdist: str, dest: str) -> str:
    """The source tree's root (the directory holding csrc/ and mamba_ssm/)."""
    if os.path.isdir(sdist):
        root = sdist
    else:
        with tarfile.open(sdist) as tar:
            tar.extractall(dest, filter="data")
        root = os.path.join(dest, os.listdir(dest)[0])
    if not os.path.isdir(os.path.join(root, "csrc", "selective_scan")):
        sys.exit(f"{sdist}: no csrc/selective_scan in it; expected mamba_ssm's source release")
    return root


# CUDA 13's CUB (CCCL 3) dropped cub::LaneId and cub::CTA_SYNC, which mamba_ssm's
# reverse_scan.cuh uses; put back for its compilation (force-included)
_CUB_COMPAT = """#pragma once
#include <cub/version.cuh>
#include <cub/util_ptx.cuh>
#if CUB_VERSION >= 300000
namespace cub {
__device__ __forceinline__ unsigned int LaneId() {
    unsigned int r; asm("mov.u32 %0, %%laneid;" : "=r"(r)); return r; }
__device__ __forceinline__ void CTA_SYNC() { __syncthreads(); }
}
#endif
"""


def stub_source() -> str:
    lines = ["#include <cuda_runtime_api.h>", "#include <torch/extension.h>",
             '#include "selective_scan.h"',
             "using complex_t = c10::complex<float>;",
             "template<typename input_t, typename weight_t>",
             "void selective_scan_bwd_cuda(SSMParamsBwd &params, cudaStream_t stream);"]
    for itype in _STUB_ITYPES:
        lines.append(f"template<> void selective_scan_bwd_cuda<{itype}, complex_t>(SSMParamsBwd &, "
                     f'cudaStream_t) {{ TORCH_CHECK(false, "this selective_scan_cuda (mambaseg '
                     f'benchmarks/mamba_ssm_build.py) has no backward for complex A"); }}')
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sdist", help="mamba_ssm-X.tar.gz, or its unpacked directory")
    p.add_argument("--out", default=".mamba_ssm_build")
    args = p.parse_args(argv)
    import torch
    from torch.utils.cpp_extension import load

    if not torch.cuda.is_available():
        sys.exit("needs a CUDA GPU (the extension is built for the current one)")
    t0 = time.perf_counter()
    out = os.path.abspath(args.out)
    src_dir, pkg_dir, ext_dir = (os.path.join(out, d) for d in ("src", "pkg", "ext"))
    for d in (src_dir, pkg_dir):
        shutil.rmtree(d, ignore_errors=True)
    os.makedirs(ext_dir, exist_ok=True)
    root = unpack(args.sdist, src_dir)
    csrc = os.path.join(root, "csrc", "selective_scan")
    stub = os.path.join(ext_dir, "selective_scan_stubs.cpp")
    with open(stub, "w") as f:
        f.write(stub_source())
    compat = os.path.join(ext_dir, "cub_compat.cuh")
    with open(compat, "w") as f:
        f.write(_CUB_COMPAT)
    major, minor = torch.cuda.get_device_capability()
    arch = f"-gencode=arch=compute_{major}{minor},code=sm_{major}{minor}"
    load(name="selective_scan_cuda", sources=[os.path.join(csrc, f) for f in _SOURCES] + [stub],
         extra_include_paths=[csrc], extra_cflags=["-O3"],
         extra_cuda_cflags=_NVCC_FLAGS + [arch, "-include", compat], build_directory=ext_dir,
         verbose=True)
    # the Python package, minus its __init__ (models, generation utilities, ...)
    shutil.copytree(os.path.join(root, "mamba_ssm"), os.path.join(pkg_dir, "mamba_ssm"))
    with open(os.path.join(pkg_dir, "mamba_ssm", "__init__.py"), "w") as f:
        f.write("# emptied by mambaseg's benchmarks/mamba_ssm_build.py\n")
    print(f"built in {time.perf_counter() - t0:.0f} s; use with\n"
          f"  PYTHONPATH={pkg_dir}:{ext_dir} python benchmarks/scan.py")


if __name__ == "__main__":
    main()
