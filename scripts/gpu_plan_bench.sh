#!/usr/bin/env bash
# The memory planner's predicted peaks against measured ones on a GPU machine (benchmarks/plan_bench.py): Llama-2-7B
# and Llama-3-8B shapes, LoRA and QLoRA, seq 2048 and 8192, random weights. About 4 minutes on an H200.
#
#   bash scripts/gpu_plan_bench.sh           # from the repository root; records in $OUT/plan.jsonl ($OUT: /tmp)
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp}
python3 benchmarks/plan_bench.py --out "$OUT/plan.jsonl" "$@"
