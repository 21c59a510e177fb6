#!/usr/bin/env bash
# GPU runs on a machine with 2 or more GPUs, one phase per `device` call (each < 10 min);
# round 2 of results/ ran tests, bench, ddp, ul and wait:
#
#   bash scripts/gpu_phases.sh tests   # CUDA tests of the CUDA-graph steps and the scan
#   bash scripts/gpu_phases.sh bench   # GPU 0: epoch time of all 13 models at their paper
#                                      #   preset (CUDA graphs on, as `mambaseg train` does);
#                                      # GPU 1: UNet paper preset, seed 1, 100 epochs (the
#                                      #   single-GPU spread for the DDP comparison)
#   bash scripts/gpu_phases.sh ddp     # both GPUs: the same UNet run, seed 0, under torchrun;
#                                      #   then test-set evaluation of the DDP and seed-1 runs
#   bash scripts/gpu_phases.sh ul      # in the background: paper protocol (paper preset,
#                                      #   100 epochs) of ulvm_unet (GPU 0) and ulvm_unet_v5 (GPU 1)
#   bash scripts/gpu_phases.sh wait S  # wait up to S s for the background runs; pack results
#   bash scripts/gpu_phases.sh predict # GPU 0: predict's throughput for all 13 models (batch 1, 16)
#   bash scripts/gpu_phases.sh reproduce MODELS PROTOCOLS [N]
#                                      # in the background: scripts/reproduce.py over N GPUs
#                                      #   (default: all), e.g. reproduce all paper 4; then `wait S`
#
# Run from the repository root with the data at $DATA; everything lands in $OUT.
set -u
PHASE=${1:?phase: tests|bench|ddp|ul|wait|predict|reproduce}
DATA=${DATA:-/root/lgg/kaggle_3m}
RUNS=${RUNS:-/root/runs}
RES=${RES:-/root/res}          # results folder of the background runs (outside the checkout)
SPLIT=results/splits/paper.json
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
OUT=${OUT:-/tmp/round3}
mkdir -p "$OUT" "$RUNS" /root/logs
unet=(--model unet --data "$DATA" --split "$SPLIT" --preset paper --no-progress --overwrite)

evaluate() {  # RUN_DIR NAME: test-set summary of RUN_DIR/last
  python3 -m mambaseg evaluate --checkpoint "$1/last" --data "$DATA" --split "$SPLIT" \
    --part test --out "$OUT/$2_summary.json" --overwrite --no-progress > "$OUT/$2_eval.txt" 2>&1
  cp "$1/metrics.jsonl" "$OUT/$2_metrics.jsonl"
  cp "$1/config.json" "$OUT/$2_config.json"
}

case "$PHASE" in
tests)
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
  timeout 400 python3 -m pytest -q -p no:cacheprovider tests/engine/test_graphs.py \
    tests/ops/test_scan_cuda.py 2>&1 | tail -25 | tee "$OUT/tests.txt"
  ;;
bench)
  CUDA_VISIBLE_DEVICES=1 timeout 560 python3 -m mambaseg train "${unet[@]}" --seed 1 \
    --out "$RUNS/unet_seed1" > "$OUT/unet_seed1.log" 2>&1 &
  p1=$!
  CUDA_VISIBLE_DEVICES=0 timeout 500 python3 benchmarks/train_epoch.py --models all \
    --data "$DATA" --epochs 2 --budget 16 --output "$OUT/train_epoch.txt" 2>&1 | tail -16
  CUDA_VISIBLE_DEVICES=0 timeout 150 python3 benchmarks/train_epoch.py --models unet --compile \
    --cuda-graphs off --data "$DATA" --epochs 2 --budget 30 --output "$OUT/train_epoch_compile.txt" \
    2>&1 | tail -2
  wait $p1
  tail -3 "$OUT/unet_seed1.log"
  ;;
ddp)
  timeout 400 torchrun --standalone --nproc_per_node=2 -m mambaseg train "${unet[@]}" --seed 0 \
    --out "$RUNS/unet_ddp2" > "$OUT/unet_ddp2.log" 2>&1
  tail -3 "$OUT/unet_ddp2.log"
  CUDA_VISIBLE_DEVICES=0 evaluate "$RUNS/unet_ddp2" unet_ddp2 &
  CUDA_VISIBLE_DEVICES=1 evaluate "$RUNS/unet_seed1" unet_seed1 &
  wait
  grep -h "dice_paper" "$OUT"/unet_*_eval.txt
  ;;
ul)
  rm -rf "$RES" && cp -r results "$RES"
  for i in 0 1; do
    model=$([ $i = 0 ] && echo ulvm_unet || echo ulvm_unet_v5)
    CUDA_VISIBLE_DEVICES=$i setsid nohup python3 scripts/reproduce.py --data "$DATA" \
      --runs-dir "$RUNS" --results-dir "$RES" --no-report --models "$model" \
      --protocols paper > "/root/logs/ul$i.log" 2>&1 < /dev/null &
  done
  sleep 60
  tail -n 3 /root/logs/ul*.log
  for m in ulvm_unet ulvm_unet_v5; do tail -n 1 "$RUNS/paper/$m/metrics.jsonl" 2>/dev/null; done
  ;;
wait)
  end=$(( $(date +%s) + ${2:-500} ))
  while [ "$(date +%s)" -lt "$end" ] && pgrep -f "scripts/[r]eproduce.py" > /dev/null; do
    sleep 10
  done
  for f in "$RUNS"/paper/*/metrics.jsonl "$RUNS"/patient/*/metrics.jsonl; do
    [ -f "$f" ] || continue
    echo "$(basename "$(dirname "$(dirname "$f")")")/$(basename "$(dirname "$f")"): $(wc -l < "$f") epochs"
    tail -n 1 "$f"
  done
  tail -n 4 /root/logs/*.log
  tar czf "$OUT/res.tgz" -C "$(dirname "$RES")" "$(basename "$RES")" \
    -C "$RUNS" $(cd "$RUNS" && ls -d paper/*/last patient/*/last patient/*/best 2>/dev/null) \
    /root/logs 2>/dev/null
  ls -la "$OUT"
  ;;
reproduce)
  [ -d "$RES" ] || cp -r results "$RES"
  ngpu=${4:-$(nvidia-smi --list-gpus | wc -l)}
  setsid nohup python3 scripts/reproduce.py --data "$DATA" --runs-dir "$RUNS" \
    --results-dir "$RES" --no-report --models "${2:?models}" --protocols "${3:?protocols}" \
    --gpus "$ngpu" > "/root/logs/reproduce-$(date +%H%M%S).log" 2>&1 < /dev/null &
  sleep 45
  tail -n 20 /root/logs/reproduce-*.log
  ;;
predict)
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
  CUDA_VISIBLE_DEVICES=0 timeout 400 python3 benchmarks/predict.py --device cuda --reps 20 \
    2>&1 | tee "$OUT/predict_gpu.txt"
  ;;
*)
  echo "unknown phase $PHASE" >&2
  exit 2
  ;;
esac
