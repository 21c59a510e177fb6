#!/usr/bin/env bash
# DistributedDataParallel check on a machine with 2 GPUs: the same UNet run (paper preset,
# paper split, $EPOCHS epochs, seed 0) once on one GPU and once under
# `torchrun --nproc_per_node=2`; prints both runs' per-epoch validation Dice and epoch times.
#
#     DATA=/root/lgg/kaggle_3m EPOCHS=5 bash scripts/gpu_ddp_check.sh
# Run from the repository root; plain python3 with PYTHONPATH=src; writes $OUT/ddp_check.txt.
set -euo pipefail
DATA=${DATA:-/root/lgg/kaggle_3m}
EPOCHS=${EPOCHS:-5}
MODEL=${MODEL:-unet}
OUT=${OUT:-/tmp/mambaseg-ddp}
RUNS=${RUNS:-/root/runs-ddp}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
mkdir -p "$OUT" "$RUNS"
common=(--model "$MODEL" --data "$DATA" --split paper --preset paper --epochs "$EPOCHS"
        --seed 0 --no-progress --overwrite)
CUDA_VISIBLE_DEVICES=0 python3 -m mambaseg train "${common[@]}" --out "$RUNS/single"
torchrun --standalone --nproc_per_node=2 -m mambaseg train "${common[@]}" --out "$RUNS/ddp2"
python3 - "$RUNS" <<'PY' | tee "$OUT/ddp_check.txt"
import json, sys
from pathlib import Path
runs = Path(sys.argv[1])
rows = {name: [json.loads(l) for l in (runs / name / "metrics.jsonl").read_text().splitlines()]
        for name in ("single", "ddp2")}
cfg = json.loads((runs / "single" / "config.json").read_text())
print(f"# {cfg.get('model')} paper preset, batch {cfg.get('batch_size')}; device {cfg.get('device_name')}")
print(f"{'epoch':>5} {'val_dice 1 GPU':>15} {'val_dice 2 GPU':>15} {'epoch_s 1 GPU':>14} {'epoch_s 2 GPU':>14}")
for a, b in zip(rows["single"], rows["ddp2"]):
    print(f"{a['epoch']:>5} {a['val_dice']:>15.4f} {b['val_dice']:>15.4f} "
          f"{a['epoch_time_s']:>14.2f} {b['epoch_time_s']:>14.2f}")
PY
