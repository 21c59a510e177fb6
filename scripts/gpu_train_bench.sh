#!/usr/bin/env bash
# Training epoch times of all 13 models at their paper preset on this GPU machine.
#
# Run from the repository root (the package need not be installed):
#     bash scripts/gpu_train_bench.sh
# Uses python3 with PYTHONPATH=src, the LGG data at $DATA (default /root/lgg/kaggle_3m; random
# uint8 data if absent) and writes the tables to stdout and $OUT/train_bench.txt.
#
# Each model: warm-up, a probe of its step time, then 2 timed epochs (best reported) of the
# paper split (3143 train + 393 val slices), train + validation pass. Models whose 2 epochs
# would exceed the per-model budget (the batch-2 ulvm_unet* models, possibly the Mamba U-Nets)
# are timed on a fixed number of steps and their epoch time is EXTRAPOLATED (the 'steps' column
# gives timed/total steps, the note says so). Then the UNet again with torch.compile (random
# data). Total about 6 minutes.
set -uo pipefail

OUT=${OUT:-/tmp/mambaseg-train-bench}
DATA=${DATA:-/root/lgg/kaggle_3m}
MODELS=${MODELS:-all}        # e.g. MODELS="unet ulvm_unet" for a shorter run
BENCH_ARGS=${BENCH_ARGS:-}   # extra options, e.g. "--device cpu --n-train 16" for a smoke test
mkdir -p "$OUT"
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
REPORT="$OUT/train_bench.txt"
: > "$REPORT"

{
  echo "# mambaseg training benchmark, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
  python3 -c "import sys, torch; print('python', sys.version.split()[0], '| torch', torch.__version__, '| cuda', torch.version.cuda)"
} | tee -a "$REPORT"

DATA_ARGS=()
if [ -d "$DATA" ]; then
  DATA_ARGS=(--data "$DATA")
else
  echo "note: $DATA not found: timing on random uint8 data of the paper split's size" | tee -a "$REPORT"
fi

echo | tee -a "$REPORT"
echo "## all models, paper preset, eager (bf16 autocast)" | tee -a "$REPORT"
# shellcheck disable=SC2086
timeout 250 python3 benchmarks/train_epoch.py --models $MODELS ${DATA_ARGS[@]+"${DATA_ARGS[@]}"} --epochs 2 \
  --budget 10 --time-limit 225 --output "$OUT/eager.txt" $BENCH_ARGS
echo "exit status $?" >> "$OUT/eager.txt"
cat "$OUT/eager.txt" >> "$REPORT"

echo | tee -a "$REPORT"
echo "## unet, paper preset, torch.compile (random data)" | tee -a "$REPORT"
# shellcheck disable=SC2086
timeout 110 python3 benchmarks/train_epoch.py --models unet --compile --epochs 2 --budget 30 \
  --output "$OUT/compiled.txt" $BENCH_ARGS
echo "exit status $?" >> "$OUT/compiled.txt"
cat "$OUT/compiled.txt" >> "$REPORT"

echo
echo "report: $REPORT"
