#!/usr/bin/env bash
# The training-speed table of BENCHMARKS.md on a GPU machine: tunelab's LoRA and QLoRA steps on a 7B/8B shape
# (benchmarks/train_bench.py), then the peers' baselines on the same shape in the same call, then the table.
#
#   [SHAPE=llama2-7b] [BASELINES=DIR] [BUDGET=330] bash scripts/gpu_bench.sh      # from the repository root
#
# SHAPE: llama2-7b (default) or llama3-8b. BASELINES: a copy of ../shared/bench with its wheel bundle, set up as its
# README says (it copies the folder to .anchors and the bundle to .pk); without it only tunelab's rows run. BUDGET:
# seconds left to the baselines (a device call is capped at 10 minutes). Records are appended to
# $OUT/results.jsonl ($OUT defaults to /tmp); compare ratios within one call, never absolute numbers across calls.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
SHAPE=${SHAPE:-llama2-7b}
OUT=${OUT:-/tmp}
export OUT
R=$OUT/results.jsonl
B="python3 benchmarks/train_bench.py --shape $SHAPE --out $R"
for run in "--method lora --offload" "--method qlora --offload" "--method qlora --offload --optimizer adamw_8bit" \
           "--method qlora --offload --batch 1"; do
    # shellcheck disable=SC2086
    $B $run 2>&1 | grep -E "SUMMARY|Error"
done
if [ -n "${BASELINES:-}" ]; then
    SHAPE=$SHAPE BUDGET=${BUDGET:-330} bash "$BASELINES/run_all.sh" ceiling build lora_bf16 qlora unsloth_qlora 2>&1 \
        | grep -E "===|Error|error" | tail -12
fi
python3 benchmarks/train_bench.py --table --out "$R"
