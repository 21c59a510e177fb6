#!/usr/bin/env bash
# GPU check of the selective scan: CUDA tests, then the benchmark (with a short Triton sweep).
# Run from the repository root on the GPU machine:  bash scripts/gpu_scan.sh
# Needs python3 with torch (+ triton); the package need not be installed (PYTHONPATH=src).
# Output goes to stdout and to $OUT (default ./gpu_scan_out): env.txt, tests.txt, bench.txt.
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-./gpu_scan_out}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
unset MAMBASEG_SCAN_BACKEND MAMBASEG_TRITON_CONFIG TRITON_INTERPRET
start=$(date +%s)

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

if [ "$have_pytest" = 1 ]; then
  echo "== rest of tests/ops (CPU backends, Triton interpreter, dispatcher)" | tee -a "$OUT/tests.txt"
  timeout 100 python3 -m pytest tests/ops -q -p no:cacheprovider --ignore=tests/ops/test_scan_cuda.py 2>&1 | tail -15 | tee -a "$OUT/tests.txt"
  echo "-- exit ${PIPESTATUS[0]}" | tee -a "$OUT/tests.txt"
fi
echo "total elapsed $(( $(date +%s) - start )) s" | tee -a "$OUT/tests.txt"
