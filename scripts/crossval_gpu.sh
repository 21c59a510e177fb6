#!/usr/bin/env bash
# Cross-validation runs of results/cv on one GPU (docs/reproduce.md, "Cross-validation").
#
#   bash scripts/crossval_gpu.sh start DATA   # in the background: the 5-fold split, then
#                                             #   unet and ulvm_unet_v6 under --preset
#                                             #   recommended (5 folds each, side by side), then
#                                             #   the recipe ablation (fold 0, validation only)
#   bash scripts/crossval_gpu.sh wait S       # wait up to S s; pack what is done into $OUT
#
# Runs land in $CV (default /root/cv); `wait` copies the small files (and the weights of the
# models of at most 1 M parameters) into $OUT as tar files.
set -u
CV=${CV:-/root/cv}
SRC=${SRC:-$PWD/src}           # the package to run; `start` runs a frozen copy of it
if [ "${1:-}" = start ]; then
  mkdir -p "$CV" && rm -rf "$CV/src" && cp -r "$SRC" "$CV/src" && cp "$0" "$CV/crossval_gpu.sh"
fi
export PYTHONPATH="$CV/src" PYTHONUNBUFFERED=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
ms="python3 -m mambaseg"
mkdir -p "$CV/logs"

EPOCHS=${EPOCHS:-}             # set only to shorten every run (a smoke test)
ablation() {  # NAME ARGS...: ulvm_unet_v6 on fold 0, 15 epochs, scored on its validation part
  local name=$1; shift
  $ms train --model ulvm_unet_v6 --data "$DATA" --split "$CV/split5.json" --fold 0 \
    --preset recommended --epochs "${EPOCHS:-15}" -o "$CV/ablation/$name" --overwrite \
    --no-progress "$@" > "$CV/logs/ablation_$name.log" 2>&1
}

case "${1:?start|wait}" in
start)
  DATA=${2:?data folder}
  [ -f "$CV/split5.json" ] || $ms data split "$DATA" --split patient --folds 5 \
    -o "$CV/split5.json" > "$CV/logs/split.log" 2>&1
  nvidia-smi --query-gpu=name,memory.total --format=csv > "$CV/logs/gpu.txt"
  for m in unet ulvm_unet_v6; do
    setsid nohup $ms crossval --model $m --data "$DATA" --split "$CV/split5.json" \
      --preset recommended -o "$CV/$m" --parallel 5 --no-progress ${EPOCHS:+--epochs $EPOCHS} \
      $([ -d "$CV/$m" ] && echo --resume) > "$CV/logs/$m.log" 2>&1 < /dev/null &
  done
  setsid nohup bash "$CV/crossval_gpu.sh" ablation "$DATA" > /dev/null 2>&1 < /dev/null &
  echo started; date
  ;;
ablation)  # the recipe's steps, one row each (started by `start`)
  DATA=${2:?data folder}
  sleep 30
  ablation r1_base --no-augment --scheduler none --warmup-epochs 0 --tumour-fraction 0 &
  ablation r2_augment --scheduler none --warmup-epochs 0 --tumour-fraction 0 &
  ablation r3_schedule --tumour-fraction 0 &
  ablation r4_oversample &
  wait
  ;;
wait)
  end=$((SECONDS + ${2:?seconds}))
  while [ $SECONDS -lt $end ] && pgrep -f "mambaseg (crossval|train)" > /dev/null; do sleep 10; done
  date; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv
  tail -n 3 "$CV"/logs/*.log
  cd "$CV" && tar cf "$OUT/cv-results.tar" --exclude='last' --exclude='best' \
    --exclude='*.png' logs split5.json unet ulvm_unet_v6 ablation 2>/dev/null
  tar cf "$OUT/cv-weights.tar" ulvm_unet_v6/fold_*/best 2>/dev/null
  ls -la "$OUT"
  ;;
esac
