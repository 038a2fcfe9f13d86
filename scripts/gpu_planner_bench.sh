#!/usr/bin/env bash
# The planner's choices beside the peers, in one device call: ../shared/bench's unsloth_qlora and lora_bf16 on the
# 7B shape, then train_bench.py with --budget 24 (QLoRA) and --budget 80 (LoRA), the fixed configurations they are
# compared with, and micro-batch 1. Needs .anchors and .pk carried (see BENCHMARKS.md); records in $OUT.
#
#   bash scripts/gpu_planner_bench.sh        # from the repository root, about 5 minutes on an H200
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH=src PYTHONUNBUFFERED=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
OUT=${OUT:-/tmp}
export OUT
R=$OUT/results.jsonl
BUDGET=300 bash .anchors/run_all.sh build unsloth_qlora lora_bf16 2>&1 | grep -E "===|Error|error" | tail -8
B="python3 benchmarks/train_bench.py --shape llama2-7b --steps 16 --out $R"
for run in "--method qlora --budget 24" "--method qlora --offload" "--method qlora --offload --checkpoint-layers 16" \
           "--method lora --budget 80" "--method qlora --offload --batch 1"; do
    # shellcheck disable=SC2086
    $B $run 2>&1 | grep -E "^->|SUMMARY|Error"
done
python3 benchmarks/train_bench.py --table --out "$R"
