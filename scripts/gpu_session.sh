#!/usr/bin/env bash
# One GPU call of the reproduction on a 2-GPU machine (what produced results/ this round):
#   1. the DistributedDataParallel check (scripts/gpu_ddp_check.sh, both GPUs);
#   2. GPU 0: paper protocol, paper preset (100 epochs) for $PAPER_MODELS, one after another;
#      GPU 1: leak-free protocol for the seven UltraLight models at once, with the changed
#      preset $UL_ARGS (see results/notes.md for why);
#   3. packs results/ and the UltraLight best/ checkpoints into $OUT/results.tgz.
# Run from the repository root with the data at $DATA.
set -u
DATA=${DATA:-/root/lgg/kaggle_3m}
BUDGET=${BUDGET:-420}
PAPER_MODELS=${PAPER_MODELS:-unet,resnet18}
UL_MODELS=${UL_MODELS:-ulvm_unet,ulvm_unet_v1,ulvm_unet_v2,ulvm_unet_v3,ulvm_unet_v4,ulvm_unet_v5,ulvm_unet_v6}
UL_EPOCHS=${UL_EPOCHS:-30}
UL_ARGS=${UL_ARGS:---batch-size 32 --lr 1e-3}
RUNS=${RUNS:-/root/runs}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
mkdir -p "$OUT"
if [ "${SKIP_DDP:-0}" != 1 ]; then
  DATA=$DATA EPOCHS=${DDP_EPOCHS:-4} OUT=$OUT timeout 200 bash scripts/gpu_ddp_check.sh > "$OUT/ddp.log" 2>&1
  tail -8 "$OUT/ddp.log"
fi
common=(--data "$DATA" --runs-dir "$RUNS" --results-dir results --no-report --stop-running
        --time-budget "$BUDGET")
CUDA_VISIBLE_DEVICES=0 python3 scripts/reproduce.py "${common[@]}" --models "$PAPER_MODELS" \
  --protocols paper > "$OUT/gpu0.log" 2>&1 &
p0=$!
CUDA_VISIBLE_DEVICES=1 python3 scripts/reproduce.py "${common[@]}" --models "$UL_MODELS" \
  --protocols patient --parallel 7 --epochs "$UL_EPOCHS" --train-args "$UL_ARGS" > "$OUT/gpu1.log" 2>&1 &
p1=$!
wait $p0 $p1
tail -n 5 "$OUT/gpu0.log" "$OUT/gpu1.log"
ckpts=$(cd "$RUNS" && ls -d patient/ulvm_unet*/best 2>/dev/null)
tar czf "$OUT/results.tgz" results $(for c in $ckpts; do echo "-C $RUNS $c"; done) 2>/dev/null \
  || tar czf "$OUT/results.tgz" results
ls -la "$OUT"
