#!/usr/bin/env bash
# CUDA graphs (train.cuda_graphs) in one device call: 7B QLoRA at micro-batch 1 eager and graphed, and the planner's
# 24 GiB and 16 GiB choices with graphs, beside ../shared/bench's unsloth_qlora. Needs .anchors and .pk carried (see
# BENCHMARKS.md); records in $OUT.
#
#   bash scripts/gpu_graphs_bench.sh        # from the repository root, about 5 minutes on an H200
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH=src PYTHONUNBUFFERED=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
OUT=${OUT:-/tmp}
export OUT
R=$OUT/results.jsonl
BUDGET=150 bash .anchors/run_all.sh build unsloth_qlora 2>&1 | grep -E "===|Error|error" | tail -6
B="python3 benchmarks/train_bench.py --shape llama2-7b --method qlora --steps 14 --out $R"
for run in "--batch 1" "--batch 1 --graphs" "--budget 24 --graphs" "--budget 16 --graphs"; do
    # shellcheck disable=SC2086
    $B $run 2>&1 | grep -E "^->|SUMMARY|Error"
done
python3 benchmarks/train_bench.py --table --out "$R"
