#!/usr/bin/env bash
# Cross-validation runs of results/cv on one GPU (docs/reproduce.md, "Cross-validation").
#
#   bash scripts/crossval_gpu.sh start DATA PLAN  # in the background: the 5-fold split, then
#                                                 #   the runs of PLAN side by side (below)
#   bash scripts/crossval_gpu.sh wait S           # wait up to S s; pack what is done into $OUT
#   bash scripts/crossval_gpu.sh bench            # in the background: training throughput of
#                                                 #   mambaseg_s in both memory formats (no data)
#   bash scripts/crossval_gpu.sh state NAME       # pack NAME's unfinished folds (last/) into $OUT
#                                                 #   to resume them in a later session
#
# Plans (every run uses --preset recommended unless it says otherwise, plus the options shown):
#   recipe1  unet and ulvm_unet_v6, 5 folds each (30 epochs), and the recipe ablation
#            (ulvm_unet_v6, fold 0, 15 epochs, scored on fold 0's validation patients)
#   round2   solo training throughput (benchmarks/train_epoch.py, batch 16), then 5 folds of
#            unet (40 epochs, lr 3e-4) and fold-0 ablation rows (40 epochs): unet at lr 1e-3,
#            ulvm_unet_v6, and mambaseg_s (lr 1e-3) with 4, 1 or 2 scan orders, Mamba at the
#            deepest level only, or no Mamba. On 2026-12-06 the GPU time ran out before the
#            mambaseg_s rows reached epoch 40 (see results/cv/notes.md); lr 1e-3 is given
#            explicitly because the recommended lr of their family was 1e-3 then (3e-4 now).
#   round3   5 folds each of ulvm_unet_v6 at lr 3e-4 (three channels, and FLAIR alone), and
#            mambaseg_s with one scan order at lr 3e-4 (two folds at a time; channels_last when
#            MAMBASEG_CL=on, after `bench` showed it faster)
#   round4   5 folds of mambaseg_s (one scan order) on FLAIR alone; mambaseg_s (one order) under
#            the paper protocol (scripts/reproduce.py, results in $CV/res/paper/mambaseg_s);
#            5 folds of ulvm_unet_v5 (two at a time)
#   round5   5 folds of mambaseg_s with one scan order and a stride-2 stem (17 ms per slice on
#            the 2-core CPU against 61 without; five side by side), then unet under the paper
#            preset (batch 64, two folds at a time; issue 16: what the recipe adds)
#   round6   the last fold of unet under the paper preset (resumed from the four folds saved in
#            results/cv/unet_paper), and 5 folds of umamba_bot (two at a time)
#   round7   ulvm_unet_v6 under the paper preset (batch 2, five folds side by side; small enough
#            for `state` to carry unfinished folds into a later session)
#   round8   5 folds of umamba_bot_pp (two at a time)
#
# Runs land in $CV (default /root/cv); `wait` copies the small files (and the weights of the
# models of at most 1 M parameters) into $OUT as tar files.
set -u
CV=${CV:-/root/cv}
SRC=${SRC:-$PWD/src}           # the package to run; `start` runs a frozen copy of it
if [ "${1:-}" = start ]; then
  mkdir -p "$CV" && rm -rf "$CV/src" && cp -r "$SRC" "$CV/src" && cp "$0" "$CV/crossval_gpu.sh"
  [ -d "$SRC/../benchmarks" ] && rm -rf "$CV/benchmarks" && cp -r "$SRC/../benchmarks" "$CV/benchmarks"
  [ -d "$SRC/../scripts" ] && rm -rf "$CV/scripts" && cp -r "$SRC/../scripts" "$CV/scripts"
  # the saved split and report inputs of results/, for scripts/reproduce.py
  [ -d "$SRC/../results/splits" ] && mkdir -p "$CV/res" && cp -r "$SRC/../results/splits" \
    "$SRC"/../results/{data_stats.json,fig3_inputs.npz} "$CV/res/"
fi
export PYTHONPATH="$CV/src" PYTHONUNBUFFERED=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
ms="python3 -m mambaseg"
mkdir -p "$CV/logs"
EPOCHS=${EPOCHS:-}             # set only to shorten every run (a smoke test)

cv() {  # NAME MODEL ARGS...: 5-fold cross-validation, folds side by side, in the background
  local name=$1 model=$2; shift 2
  setsid nohup $ms crossval --model "$model" --data "$DATA" --split "$CV/split5.json" \
    --preset recommended -o "$CV/$name" --parallel "${PARALLEL:-5}" --no-progress "$@" ${EPOCHS:+--epochs $EPOCHS} \
    $([ -d "$CV/$name" ] && echo --resume) > "$CV/logs/$name.log" 2>&1 < /dev/null &
}
fold0() {  # NAME MODEL ARGS...: fold 0 only, in the background, scored on its validation part
  local name=$1 model=$2; shift 2
  setsid nohup $ms train --model "$model" --data "$DATA" --split "$CV/split5.json" --fold 0 \
    --preset recommended -o "$CV/ablation/$name" --overwrite --no-progress "$@" \
    ${EPOCHS:+--epochs $EPOCHS} > "$CV/logs/ablation_$name.log" 2>&1 < /dev/null &
}

case "${1:?start|wait}" in
start)
  DATA=${2:?data folder}
  [ -f "$CV/split5.json" ] || $ms data split "$DATA" --split patient --folds 5 \
    -o "$CV/split5.json" > "$CV/logs/split.log" 2>&1
  nvidia-smi --query-gpu=name,memory.total --format=csv > "$CV/logs/gpu.txt"
  case "${3:?plan: recipe1 or round2 ... round8}" in
  recipe1)
    cv unet unet
    cv ulvm_unet_v6 ulvm_unet_v6
    sleep 30
    for e in "r1_base --no-augment --scheduler none --warmup-epochs 0 --tumour-fraction 0" \
             "r2_augment --scheduler none --warmup-epochs 0 --tumour-fraction 0" \
             "r3_schedule --tumour-fraction 0" "r4_oversample"; do
      set -- $e; name=$1; shift
      EPOCHS=${EPOCHS:-15} fold0 "$name" ulvm_unet_v6 "$@"
    done
    ;;
  round2)
    # the solo throughput first: the GPU is still idle, and it checks each model runs there
    python3 "$CV/benchmarks/train_epoch.py" --models unet mambaseg_s ulvm_unet_v6 \
      --preset recommended --epochs 1 --budget 15 --no-checkpoint-time \
      --output "$CV/logs/train_epoch_b16.txt" > "$CV/logs/train_epoch_b16.log" 2>&1
    tail -n 5 "$CV/logs/train_epoch_b16.log"
    cv unet_e40_lr3e-4 unet --epochs 40 --lr 3e-4
    sleep 30
    fold0 r5_unet_e40_lr1e-3 unet --epochs 40 --lr 1e-3
    fold0 r6_mambaseg_s_one_order mambaseg_s --epochs 40 --lr 1e-3 --model-arg directions=1
    fold0 r7_mambaseg_s_no_mamba mambaseg_s --epochs 40 --lr 1e-3 --model-arg mixer=conv
    fold0 r8_ulvm_unet_v6_e40 ulvm_unet_v6 --epochs 40
    fold0 r9_mambaseg_s mambaseg_s --epochs 40 --lr 1e-3
    fold0 r10_mambaseg_s_deep_only mambaseg_s --epochs 40 --lr 1e-3 --model-arg mamba_levels=1
    fold0 r11_mambaseg_s_two_orders mambaseg_s --epochs 40 --lr 1e-3 --model-arg directions=2
    ;;
  round3)
    cv ulvm_unet_v6_lr3e-4 ulvm_unet_v6 --lr 3e-4
    cv ulvm_unet_v6_flair ulvm_unet_v6 --lr 3e-4 --channels flair
    PARALLEL=2 cv mambaseg_s_o1 mambaseg_s --model-arg directions=1 \
      --channels-last "${MAMBASEG_CL:-auto}"
    ;;
  round4)
    PARALLEL=5 cv mambaseg_s_o1_flair mambaseg_s --model-arg directions=1 --channels flair
    setsid nohup python3 "$CV/scripts/reproduce.py" --data "$DATA" --only paper/mambaseg_s \
      --runs-dir "$CV/runs" --results-dir "$CV/res" --no-report \
      --train-args "--model-arg directions=1" > "$CV/logs/paper_mambaseg_s.log" 2>&1 < /dev/null &
    PARALLEL=2 cv ulvm_unet_v5 ulvm_unet_v5
    ;;
  round5)
    PARALLEL=5 cv mambaseg_s_o1_s2 mambaseg_s --model-arg directions=1 --model-arg stem_stride=2
    PARALLEL=2 cv unet_paper unet --preset paper
    ;;
  round6)
    # folds 0-3 ran on 2026-12-06 (round5); --resume (cv) trains only fold 4
    [ -d "$CV/unet_paper" ] || cp -r "$SRC/../results/cv/unet_paper" "$CV/unet_paper"
    PARALLEL=1 cv unet_paper unet --preset paper
    PARALLEL=2 cv umamba_bot umamba_bot
    ;;
  round7)
    PARALLEL=5 cv ulvm_unet_v6_paper ulvm_unet_v6 --preset paper
    ;;
  round8)
    PARALLEL=2 cv umamba_bot_pp umamba_bot_pp
    ;;
  *) echo "unknown plan $3" >&2; exit 2 ;;
  esac
  echo started; date
  ;;
bench)  # from its own copy of the package, so that a `start` meanwhile does not disturb it
  rm -rf "$CV/bench" && mkdir -p "$CV/bench" && cp -r "$SRC" "$SRC/../benchmarks" "$CV/bench/"
  b="env PYTHONPATH=$CV/bench/src python3 $CV/bench/benchmarks/train_epoch.py --preset recommended"
  b="$b --epochs 1 --budget 15 --no-checkpoint-time"
  setsid nohup bash -c "$b --models mambaseg_s:directions=1 unet --channels-last off; \
    $b --models mambaseg_s:directions=1 mambaseg_s --channels-last on; \
    $b --models mambaseg_s:directions=1 --channels-last on --profile 20 --budget 5" \
    > "$CV/logs/bench_round3.log" 2>&1 < /dev/null &
  echo started bench
  ;;
state)
  name=${2:?cross-validation name}
  cd "$CV/$name" && for f in fold_*; do
    [ -f "$f/summary.json" ] || tar cf "$OUT/state-$name-$f.tar" "$f" --exclude=best
  done
  ls -la "$OUT"
  ;;
wait)
  end=$((SECONDS + ${2:?seconds}))
  while [ $SECONDS -lt $end ] && pgrep -f "mambaseg (crossval|train|evaluate)|reproduce.py" > /dev/null; do sleep 10; done
  date; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv
  tail -n 2 "$CV"/logs/*.log
  cd "$CV" && tar cf "$OUT/cv-results.tar" --exclude='last' --exclude='best' --exclude='src' \
    --exclude='benchmarks' --exclude='*.png' --exclude='*.tar' . 2>/dev/null
  # weights of the models of at most 1 M parameters (a tar per model, in 15 MiB pieces)
  for d in */fold_0/best; do
    m=${d%%/*}
    python3 -c "import json,sys; sys.exit(json.load(open('$d/config.json')).get('num_parameters', 0) > 1e6)" \
      2>/dev/null || continue
    tar cf - "$m"/fold_*/best/config.json "$m"/fold_*/best/model.safetensors 2>/dev/null \
      | split -b 15M -d - "$OUT/weights-$m.tar."
  done
  ls -la "$OUT"
  ;;
esac
