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
#                                      #   (default: all), e.g. reproduce all paper 4; then `wait S`;
#                                      #   FORCE=1 redoes runs already in results/ (e.g. segformer
#                                      #   after results/invalid.json: FORCE=1 ... reproduce segformer
#                                      #   paper,patient 2)
#   bash scripts/gpu_phases.sh rest [N] # in the background over N GPUs (default all), then
#                                      #   `wait S`: the runs still not done after round 5
#                                      #   (results/notes.md): the paper preset of ulvm_unet_v1..v4
#                                      #   (paper protocol), longest first; about 40 GPU-minutes
#                                      #   on H200s
#   bash scripts/gpu_phases.sh segformer # round 4, in the background on GPU 0, then `wait S`: both
#                                      #   SegFormer runs again, side by side (results/invalid.json)
#   bash scripts/gpu_phases.sh table1  # round 3, 4 GPUs, in the background, then `wait S`:
#                                      # GPUs 0-2: the rest of Table I at the paper preset
#                                      #   (paper protocol: segformer, umamba_bot, umamba_bot_pp,
#                                      #   resnet50; leak-free: the six baselines);
#                                      # GPU 3: the CUDA tests, predict and train_epoch benchmarks,
#                                      #   then the paper protocol of ulvm_unet_v1..v4, v6 with the
#                                      #   changed UltraLight preset (results/notes.md says why),
#                                      #   then UNet --compile epoch time
#
# Run from the repository root with the data at $DATA; everything lands in $OUT.
set -u
PHASE=${1:?phase: tests|bench|ddp|ul|wait|predict|reproduce|table1|rest|segformer}
DATA=${DATA:-/root/lgg/kaggle_3m}
RUNS=${RUNS:-/root/runs}
RES=${RES:-/root/res}          # results folder of the background runs (outside the checkout)
SPLIT=results/splits/paper.json
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
OUT=${OUT:-/tmp/round3}
BENCH=${BENCH:-/root/bench}    # outputs of background checks and benchmarks
mkdir -p "$OUT" "$RUNS" /root/logs "$BENCH" /root/pids
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
  alive() {  # any background queue (table1) or reproduce.py still running
    for f in /root/pids/*; do [ -f "$f" ] && kill -0 "$(cat "$f")" 2> /dev/null && return 0; done
    pgrep -f "scripts/[r]eproduce.py" > /dev/null
  }
  while [ "$(date +%s)" -lt "$end" ] && alive; do
    sleep 10
  done
  cat "$BENCH"/status.* 2> /dev/null
  for f in "$RUNS"/paper/*/metrics.jsonl "$RUNS"/patient/*/metrics.jsonl; do
    [ -f "$f" ] || continue
    echo "$(basename "$(dirname "$(dirname "$f")")")/$(basename "$(dirname "$f")"): $(wc -l < "$f") epochs"
    tail -n 1 "$f"
  done
  tail -n 4 /root/logs/*.log
  # the run logs, and the checkpoints of the small models (a file back from $OUT is <= 16 MiB)
  ckpts=$(cd "$RUNS" && ls paper/*/*.log patient/*/*.log reproduce.log 2> /dev/null)
  for d in $(cd "$RUNS" && ls -d paper/*/last patient/*/last patient/*/best 2> /dev/null); do
    [ "$(du -sm "$RUNS/$d" | cut -f1)" -le 8 ] && ckpts="$ckpts $d"
  done
  tar czf "$OUT/res.tgz" -C "$(dirname "$RES")" "$(basename "$RES")" -C "$RUNS" $ckpts \
    /root/logs "$BENCH" 2> /dev/null
  ls -la "$OUT"
  ;;
reproduce)
  [ -d "$RES" ] || cp -r results "$RES"
  ngpu=${4:-$(nvidia-smi --list-gpus | wc -l)}
  setsid nohup python3 scripts/reproduce.py --data "$DATA" --runs-dir "$RUNS" \
    --results-dir "$RES" --no-report --models "${2:?models}" --protocols "${3:?protocols}" \
    --gpus "$ngpu" ${FORCE:+--force} > "/root/logs/reproduce-$(date +%H%M%S).log" 2>&1 < /dev/null &
  sleep 45
  tail -n 20 /root/logs/reproduce-*.log
  ;;
rest)
  [ -d "$RES" ] || cp -r results "$RES"
  ngpu=${2:-$(nvidia-smi --list-gpus | wc -l)}
  setsid nohup python3 scripts/reproduce.py --data "$DATA" --runs-dir "$RUNS" --results-dir "$RES" \
    --no-report --force --gpus "$ngpu" --only paper/ulvm_unet_v4,paper/ulvm_unet_v3,\
paper/ulvm_unet_v1,paper/ulvm_unet_v2 \
    > /root/logs/rest.log 2>&1 < /dev/null &
  sleep 45
  tail -n 12 /root/logs/rest.log
  ;;
segformer)
  [ -d "$RES" ] || cp -r results "$RES"
  setsid nohup python3 scripts/reproduce.py --data "$DATA" --runs-dir "$RUNS" --results-dir "$RES" \
    --no-report --force --gpus 1 --parallel 2 --only paper/segformer,patient/segformer \
    > /root/logs/segformer.log 2>&1 < /dev/null &
  sleep 20
  tail -n 6 /root/logs/segformer.log
  ;;
table1)
  rm -rf "$RES" && mkdir -p "$RES"
  # one queue per results folder (merged afterwards), so no two reproduce.py write one reproduce.json
  queue() {  # NAME COMMANDS: run COMMANDS in a new session, pid in /root/pids/NAME
    setsid nohup bash -c "$2; echo \"\$(date +%T) $1 done\" > $BENCH/status.$1" \
      > "/root/logs/$1.log" 2>&1 < /dev/null &
    echo $! > "/root/pids/$1"
  }
  repro="python3 scripts/reproduce.py --data $DATA --runs-dir $RUNS --no-report"
  cp -r results "$RES/base" && cp -r results "$RES/ul"
  queue base "$repro --results-dir $RES/base --gpus 0,1,2 --protocols paper,patient \
    --models segformer,umamba_bot,umamba_bot_pp,resnet50,unet,resnet18"
  checks="nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $BENCH/gpu.txt
    timeout 420 python3 -m pytest -q -p no:cacheprovider tests/engine/test_graphs.py \
      tests/ops/test_scan_cuda.py > $BENCH/tests.txt 2>&1
    timeout 300 python3 benchmarks/predict.py --device cuda --reps 20 > $BENCH/predict_gpu.txt 2>&1
    timeout 420 python3 benchmarks/train_epoch.py --models all --data $DATA --epochs 2 \
      --budget 16 --output $BENCH/train_epoch.txt > $BENCH/train_epoch.log 2>&1
    $repro --results-dir $RES/ul --protocols paper --parallel 5 --epochs 30 \
      --models ulvm_unet_v1,ulvm_unet_v2,ulvm_unet_v3,ulvm_unet_v4,ulvm_unet_v6 \
      --train-args '--batch-size 32 --lr 1e-3'
    timeout 240 python3 benchmarks/train_epoch.py --models unet --compile --cuda-graphs off \
      --data $DATA --epochs 2 --budget 200 --output $BENCH/train_epoch_compile.txt \
      > $BENCH/train_epoch_compile.log 2>&1"
  # the paper preset's base models take GPUs 0-2 (the '--paper' protocol first in each queue)
  queue checks "export CUDA_VISIBLE_DEVICES=3; $checks"
  sleep 50
  tail -n 12 /root/logs/base.log; tail -n 3 "$BENCH"/tests.txt 2> /dev/null
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
