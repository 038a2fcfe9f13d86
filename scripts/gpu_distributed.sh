#!/usr/bin/env bash
# Several GPUs (issue 19): the CUDA tests of `tunelab train --nproc N` (one rank on one GPU, and QLoRA under FSDP2
# with a one-rank process group against the unsharded model; with two GPUs, DDP, FSDP2 and QLoRA under FSDP2 against
# one process and resume on one GPU), then the benchmark: 7B LoRA on 1 and 2 GPUs (DDP; target >= 1.9x one GPU's
# tokens/s), 7B full fine-tuning with FSDP2 on 2 GPUs (memory per GPU), and 70B QLoRA: on one GPU, and with FSDP2
# across 2 GPUs (the NF4 base sharded: memory per GPU and tokens/s).
#
#   TUNELAB_GPU_TOKENIZER=DIR bash scripts/gpu_distributed.sh          # from the repository root, on 2+ GPUs
#   SKIP_BENCH=1 ... bash scripts/gpu_distributed.sh                    # the tests only (one GPU is enough for them)
#   SKIP_70B=1 ... bash scripts/gpu_distributed.sh                      # leave out the 70B QLoRA rows
#
# TUNELAB_GPU_TOKENIZER: a folder written by scripts/save_gpu_tokenizer.py (the tests skip without it). Results go to
# $OUT/dist_results.jsonl and the pytest log to $OUT/pytest_distributed.log ($OUT defaults to /tmp).
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
PY=${PYTHON:-python3}
OUT=${OUT:-/tmp}
GPUS=$($PY -c "import torch; print(torch.cuda.device_count())")
echo "GPUs: $GPUS"
$PY -m pytest -q -rfEs --tb=short -p no:cacheprovider tests/gpu/test_distributed_gpu.py 2>&1 \
    | tee "$OUT/pytest_distributed.log" | tail -n 40
status=${PIPESTATUS[0]}
if [ -z "${SKIP_BENCH:-}" ]; then
    R=$OUT/dist_results.jsonl
    B="benchmarks/dist_bench.py --shape ${SHAPE:-llama2-7b} --out $R"
    # 70B QLoRA: batch 1 x 2048 tokens per GPU, no recomputation (FSDP2 does not take tunelab's yet)
    Q="benchmarks/dist_bench.py --shape llama3-70b --method qlora --batch 1 --no-checkpointing --steps 8 --out $R"
    # shellcheck disable=SC2086
    $PY -m torch.distributed.run --standalone --nproc-per-node 1 $B --method lora 2>&1 | grep -E "SUMMARY|Error"
    if [ -z "${SKIP_70B:-}" ]; then
        # shellcheck disable=SC2086
        $PY -m torch.distributed.run --standalone --nproc-per-node 1 $Q 2>&1 | grep -E "SUMMARY|Error"
    fi
    if [ "$GPUS" -ge 2 ]; then
        $PY -m torch.distributed.run --standalone --nproc-per-node 2 $B --method lora 2>&1 | grep -E "SUMMARY|Error"
        $PY -m torch.distributed.run --standalone --nproc-per-node 2 $B --method full --batch 1 2>&1 \
            | grep -E "SUMMARY|Error"
        if [ -z "${SKIP_70B:-}" ]; then
            # shellcheck disable=SC2086
            $PY -m torch.distributed.run --standalone --nproc-per-node 2 $Q --sharding fsdp2 2>&1 \
                | grep -E "SUMMARY|Error"
        fi
        $PY - "$R" <<'PYEOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
lora = {r["gpus"]: r["tokens_per_s"] for r in rows if r["config"].startswith("tunelab_lora")}
if 1 in lora and 2 in lora:
    print(f"7B LoRA: 1 GPU {lora[1]:.0f} tok/s, 2 GPUs {lora[2]:.0f} tok/s: {lora[2] / lora[1]:.2f}x (target 1.9x)")
for r in rows:
    print(
        r["config"], r["shape"], f"{r['tokens_per_s']:.0f} tok/s", f"peak {r['peak_alloc_gib_per_gpu']} GiB/GPU",
        f"(steps {r.get('steps_peak_alloc_gib_per_gpu')} GiB, NF4 base held {r.get('nf4_gib_per_gpu')} GiB)",
    )
PYEOF
    else
        echo "one GPU: the 2-GPU benchmark rows (7B LoRA DDP, 7B full FSDP2, 70B QLoRA FSDP2) need a host with two"
    fi
fi
exit "$status"
