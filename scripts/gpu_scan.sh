#!/usr/bin/env bash
# GPU check of the selective scan: CUDA tests, then the benchmark (with a short Triton sweep).
# Run from the repository root on the GPU machine:  bash scripts/gpu_scan.sh
#   bash scripts/gpu_scan.sh compare mamba_ssm-X.tar.gz [WHEELS]   # instead: build mamba_ssm's
#       selective scan (benchmarks/mamba_ssm_build.py; einops from WHEELS), then the CUDA tests and
#       the benchmarks with mamba_ssm in the same run -> build.txt, tests.txt, bench.txt,
#       profile.txt, host.txt
#   bash scripts/gpu_scan.sh profile [CONFIGS]   # instead: the CUDA tests of both kernel layouts
#       and of the graphed training steps, benchmarks/scan_profile.py over CONFIGS (";"-separated,
#       default below) -> profile.txt, host-time profiles, and benchmarks/scan.py --reps 50
# Needs python3 with torch (+ triton); the package need not be installed (PYTHONPATH=src).
# Output goes to stdout and to $OUT (default ./gpu_scan_out): env.txt, tests.txt, bench.txt,
# layouts.txt (the tile kernels, config KERNEL=1: CUDA tests; timings of other configurations).
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-./gpu_scan_out}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
unset MAMBASEG_SCAN_BACKEND MAMBASEG_TRITON_CONFIG TRITON_INTERPRET
start=$(date +%s)

if [ "${1:-}" = compare ]; then
  # bash scripts/gpu_scan.sh compare mamba_ssm-X.tar.gz [EINOPS_WHEEL_DIR]: build mamba_ssm's CUDA
  # selective scan (benchmarks/mamba_ssm_build.py), then the CUDA tests (which compare the
  # backends with each other), benchmarks/scan.py with mamba_ssm in the same run, the profile of
  # the default configuration and the host-time profile
  SDIST=${2:?usage: gpu_scan.sh compare mamba_ssm-X.tar.gz [wheel dir]}
  if [ -n "${3:-}" ]; then  # einops (which mamba_ssm's Python side imports), as wheels
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$3"/*.whl
    export PYTHONPATH="$PYTHONPATH:/tmp/site"
  fi
  MAX_JOBS=16 timeout 400 python3 benchmarks/mamba_ssm_build.py "$SDIST" --out /tmp/mamba_ssm_build \
    > "$OUT/build.txt" 2>&1 || { tail -30 "$OUT/build.txt"; exit 1; }
  tail -2 "$OUT/build.txt"
  export PYTHONPATH="$PYTHONPATH:/tmp/mamba_ssm_build/pkg:/tmp/mamba_ssm_build/ext"
  { nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
    python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
    echo "-- scan (all backends, mamba_ssm included) and CUDA-graph steps"
    timeout 240 python3 -m pytest tests/ops/test_scan_cuda.py tests/engine/test_graphs.py -q -rs \
      -p no:cacheprovider 2>&1 | tail -6
    echo "-- triton backend with MAMBASEG_TRITON_CONFIG=KERNEL=1"
    MAMBASEG_TRITON_CONFIG=KERNEL=1 timeout 120 python3 -m pytest tests/ops/test_scan_cuda.py -q \
      -p no:cacheprovider -k "triton and not default_backend" 2>&1 | tail -3
  } 2>&1 | tee "$OUT/tests.txt"
  timeout 200 python3 benchmarks/scan.py --reps 50 --no-reference > "$OUT/bench.txt" 2>&1
  tail -30 "$OUT/bench.txt"
  timeout 120 python3 benchmarks/scan_profile.py > "$OUT/profile.txt" 2>&1
  sed -n '/^summary/,$p' "$OUT/profile.txt"
  timeout 60 python3 benchmarks/scan_host_profile.py --shape 8x12x1024 > "$OUT/host.txt" 2>&1
  head -12 "$OUT/host.txt"
  echo "elapsed $(( $(date +%s) - start )) s"
  exit 0
fi

if [ "${1:-}" = profile ]; then
  CONFIGS=${2:-"default;KERNEL=1;KERNEL=2,T=32;KERNEL=2,T=32,BC=1;KERNEL=2,WARPS=2"}
  { nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
    python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
    echo "-- scan (default: lean kernels) and CUDA-graph steps"
    timeout 240 python3 -m pytest tests/ops/test_scan_cuda.py tests/engine/test_graphs.py -q \
      -p no:cacheprovider 2>&1 | tail -4
    for cfg in KERNEL=1; do
      echo "-- triton backend with MAMBASEG_TRITON_CONFIG=$cfg"
      MAMBASEG_TRITON_CONFIG=$cfg timeout 120 python3 -m pytest tests/ops/test_scan_cuda.py -q \
        -p no:cacheprovider -k "triton and not default_backend" 2>&1 | tail -3
    done
  } 2>&1 | tee "$OUT/tests.txt"
  timeout 200 python3 benchmarks/scan_profile.py --configs "$CONFIGS" > "$OUT/profile.txt" 2>&1
  sed -n '/^summary/,$p' "$OUT/profile.txt"
  for shape in 8x12x1024 8x16x4096; do
    timeout 60 python3 benchmarks/scan_host_profile.py --shape $shape > "$OUT/host_$shape.txt" 2>&1
    head -14 "$OUT/host_$shape.txt"
  done
  timeout 120 python3 benchmarks/scan.py --reps 50 --no-reference > "$OUT/bench.txt" 2>&1
  tail -22 "$OUT/bench.txt"
  echo "elapsed $(( $(date +%s) - start )) s"
  exit 0
fi

{
  echo "== environment"
  date
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 | head -3
  python3 - <<'PY'
import torch, sys
print("python", sys.version.split()[0], "| torch", torch.__version__, "| cuda", torch.version.cuda)
try:
    import triton
    print("triton", triton.__version__)
except Exception as e:
    print("triton not importable:", e)
try:
    import mamba_ssm
    print("mamba_ssm", getattr(mamba_ssm, "__version__", "?"))
except Exception:
    print("mamba_ssm not installed")
print("device:", torch.cuda.get_device_name() if torch.cuda.is_available() else "NO CUDA")
from mambaseg.ops import available_backends
print("backends on cuda:", available_backends("cuda"))
PY
} 2>&1 | tee "$OUT/env.txt"

have_pytest=1
python3 -c "import pytest" 2>/dev/null || have_pytest=0

echo "== CUDA tests (tests/ops/test_scan_cuda.py)" | tee "$OUT/tests.txt"
if [ "$have_pytest" = 1 ]; then
  timeout 240 python3 -m pytest tests/ops/test_scan_cuda.py -q -rs --durations=8 -p no:cacheprovider 2>&1 | tee -a "$OUT/tests.txt"
else
  echo "pytest not installed: running the file as a script" | tee -a "$OUT/tests.txt"
  timeout 240 python3 tests/ops/test_scan_cuda.py 2>&1 | tee -a "$OUT/tests.txt"
fi
echo "-- exit ${PIPESTATUS[0]}, elapsed $(( $(date +%s) - start )) s" | tee -a "$OUT/tests.txt"

echo "== benchmark fp32 (+ Triton sweep)" | tee "$OUT/bench.txt"
timeout 180 python3 benchmarks/scan.py --reps 20 --sweep 2>&1 | tee -a "$OUT/bench.txt"
echo "-- exit ${PIPESTATUS[0]}, elapsed $(( $(date +%s) - start )) s" | tee -a "$OUT/bench.txt"
echo "== benchmark bf16" | tee -a "$OUT/bench.txt"
timeout 60 python3 benchmarks/scan.py --reps 20 --dtype bfloat16 --no-reference 2>&1 | tee -a "$OUT/bench.txt"
echo "-- exit ${PIPESTATUS[0]}, elapsed $(( $(date +%s) - start )) s" | tee -a "$OUT/bench.txt"

# The other kernel layout of the Triton backend (launch-config key KERNEL=1, the tile layout of
# src/mambaseg/ops/scan_triton.py; the default is the lean layout): the CUDA tests of the triton
# backend with it, then its timings and a few lean configurations next to the default.
OTHER_CONFIGS="KERNEL=1;KERNEL=2,BC=1;KERNEL=2,T=64;KERNEL=2,T=32;KERNEL=2,WARPS=8;KERNEL=2,MAXNREG=0"
echo "== CUDA tests, triton backend with the tile kernels (MAMBASEG_TRITON_CONFIG=KERNEL=1)" | tee "$OUT/layouts.txt"
if [ "$have_pytest" = 1 ]; then
  MAMBASEG_TRITON_CONFIG=KERNEL=1 timeout 240 python3 -m pytest tests/ops/test_scan_cuda.py -q -rs -p no:cacheprovider -k "triton and not default_backend" 2>&1 | tail -15 | tee -a "$OUT/layouts.txt"
else
  MAMBASEG_TRITON_CONFIG=KERNEL=1 timeout 240 python3 tests/ops/test_scan_cuda.py 2>&1 | grep -i "triton\|failures" | tee -a "$OUT/layouts.txt"
fi
echo "-- exit ${PIPESTATUS[0]}, elapsed $(( $(date +%s) - start )) s" | tee -a "$OUT/layouts.txt"
echo "== benchmark fp32, Triton default next to other configurations" | tee -a "$OUT/layouts.txt"
timeout 420 python3 benchmarks/scan.py --reps 20 --backends triton --no-reference --configs "$OTHER_CONFIGS" 2>&1 | tee -a "$OUT/layouts.txt"
echo "-- exit ${PIPESTATUS[0]}, elapsed $(( $(date +%s) - start )) s" | tee -a "$OUT/layouts.txt"

if [ "$have_pytest" = 1 ]; then
  echo "== rest of tests/ops (CPU backends, Triton interpreter, dispatcher)" | tee -a "$OUT/tests.txt"
  timeout 200 python3 -m pytest tests/ops -q -p no:cacheprovider --ignore=tests/ops/test_scan_cuda.py 2>&1 | tail -15 | tee -a "$OUT/tests.txt"
  echo "-- exit ${PIPESTATUS[0]}" | tee -a "$OUT/tests.txt"
fi
echo "total elapsed $(( $(date +%s) - start )) s" | tee -a "$OUT/tests.txt"
